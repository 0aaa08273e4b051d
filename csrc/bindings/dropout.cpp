// dropout.cpp -- Python binding of csrc/kernels/dropout.cu.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/dropout.h"

namespace gpunet {

void bind_dropout(py::module_& m) {
  m.def(
      "dropout_apply",
      [](py::handle x_o, py::handle y_o, uint64_t seed, uint64_t offset, uint64_t threshold, float scale,
         std::uintptr_t stream) {
        const View x = as_array(x_o, "x", "float32");
        const View y = as_array(y_o, "y", "float32");
        require_writable(y, "y");
        require_same_shape(x, "x", y, "y");
        if (threshold > (1ull << 32))
          throw py::value_error("argument 'threshold': expected at most 2^32 (drop everything) but got " +
                                std::to_string(threshold));
        auto guard = vouch({x, y});
        dropout_apply(x.ptr<float>(), y.ptr<float>(), x.numel(), seed, offset, threshold, scale, as_stream(stream));
        check_launch("dropout_apply");
      },
      py::arg("x"), py::arg("y"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("scale"),
      py::arg("stream"),
      "y = x * scale where the counter-based generator keeps the element, else 0 (see\n"
      "gpunet/ops/dropout.py): element k is kept iff the high 32 bits of SplitMix64 output\n"
      "offset + k of stream `seed` are >= threshold. Forward on x, backward on dy with the\n"
      "same (seed, offset). x, y float32, same shape (y may be x); seed, offset < 2^64.");
}

}  // namespace gpunet
