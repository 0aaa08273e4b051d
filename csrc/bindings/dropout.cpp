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
        const View x = view_of(x_o, "x"), y = view_of(y_o, "y");
        const Storage storage = same_storage({{&x, "x"}, {&y, "y"}});
        require_writable(y, "y");
        require_same_shape(x, "x", y, "y");
        if (threshold > (1ull << 32))
          throw py::value_error("argument 'threshold': expected at most 2^32 (drop everything) but got " +
                                std::to_string(threshold));
        auto guard = vouch({x, y});
        dropout_apply(storage, x.data, y.data, x.numel(), seed, offset, threshold, scale, as_stream(stream));
        check_launch("dropout_apply");
      },
      py::arg("x"), py::arg("y"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("scale"),
      py::arg("stream"),
      "y = x * scale where the counter-based generator keeps the element, else 0 (see\n"
      "gpunet/ops/dropout.py): element k is kept iff the high 32 bits of SplitMix64 output\n"
      "offset + k of stream `seed` are >= threshold. Forward on x, backward on dy with the\n"
      "same (seed, offset). x, y C-contiguous, same shape and dtype: float32, float16 or\n"
      "bfloat16 (its bits as int16), computed in float32 (y may be x); seed, offset < 2^64.");
}

}  // namespace gpunet
