// families.h -- one bind_<family>() per csrc/bindings/<family>.cpp, called
// by csrc/module.cpp. A family has one name in every layer:
// csrc/kernels/<family>.cu and .h, csrc/bindings/<family>.cpp,
// gpunet/ops/<family>.py and tests/test_<family>.py. Adding a family: write
// the kernels, header and binding (defining bind_<family>), declare it here
// and call it in module.cpp. CMake picks up the new files by itself (re-run
// `pip install` or the cmake build; the globs are CONFIGURE_DEPENDS).
#pragma once
#include <pybind11/pybind11.h>

namespace gpunet {

void bind_activation(pybind11::module_& m);
void bind_attention(pybind11::module_& m);
void bind_conv(pybind11::module_& m);
void bind_dropout(pybind11::module_& m);
void bind_embedding(pybind11::module_& m);
void bind_linear(pybind11::module_& m);
void bind_loss(pybind11::module_& m);
void bind_norm(pybind11::module_& m);
void bind_optim(pybind11::module_& m);
void bind_pool(pybind11::module_& m);
void bind_rnn(pybind11::module_& m);
void bind_softmax(pybind11::module_& m);
void bind_testing(pybind11::module_& m);

}  // namespace gpunet
