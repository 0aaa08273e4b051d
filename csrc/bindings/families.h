// families.h -- the kernel families, each bound by bind_<family>() in
// csrc/bindings/<family>.cpp; csrc/module.cpp calls them all. A family has
// one name in every layer: csrc/kernels/<family>.cu and .h,
// csrc/bindings/<family>.cpp, gpunet/ops/<family>.py and
// tests/test_<family>.py. Adding a family: write its kernels, header and
// binding (defining bind_<family>) and add its name to GPUNET_FAMILIES. CMake
// picks up the new files by itself (re-run `pip install` or the cmake build;
// the globs are CONFIGURE_DEPENDS).
#pragma once
#include <pybind11/pybind11.h>

// X(family) for every family, in the order module.cpp binds them.
#define GPUNET_FAMILIES(X)                                                                                      \
  X(activation) X(attention) X(attention_tc) X(conv) X(conv_tensor_core) X(dropout) X(embedding) X(halftest)   \
  X(linear) X(loss) X(norm) X(optim) X(pool) X(profile) X(racecheck) X(rnn) X(softmax) X(testing)

namespace gpunet {

#define GPUNET_DECLARE_BIND(family) void bind_##family(pybind11::module_& m);
GPUNET_FAMILIES(GPUNET_DECLARE_BIND)
#undef GPUNET_DECLARE_BIND

}  // namespace gpunet
