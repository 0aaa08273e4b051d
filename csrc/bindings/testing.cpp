// testing.cpp -- bindings of the TEST-ONLY kernels in csrc/kernels/testing.cu
// (leading underscore: not part of gpunet's API).
#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/testing.h"

namespace gpunet {
namespace {

void sum_binding(py::handle x_obj, py::handle out_obj, std::uintptr_t stream, bool racy) {
  const View x = as_array(x_obj, "x", "float32");
  const View out = as_array(out_obj, "out", "float32");
  require_ndim(x, "x", 1);
  require_shape(out, "out", {1});
  require_writable(out, "out");
  auto guard = vouch({x, out});
  block_sum(x.ptr<float>(), out.ptr<float>(), x.numel(), racy, as_stream(stream));
  check_launch(racy ? "_racy_block_sum" : "_block_sum");
}

}  // namespace

void bind_testing(py::module_& m) {
  for (const bool racy : {false, true})
    m.def(
        racy ? "_racy_block_sum" : "_block_sum",
        [racy](py::handle x, py::handle out, std::uintptr_t stream) { sum_binding(x, out, stream, racy); },
        py::arg("x"), py::arg("out"), py::arg("stream"),
        racy ? "TEST-ONLY. _block_sum with one __syncthreads() missing: a deliberate race\n"
               "that the simulator's random schedule must expose."
             : "TEST-ONLY. out[0] = sum(x) by one block (shared-memory tree reduction).\n"
               "x: float32 (n,); out: float32 (1,).");
  m.def(
      "_invalid_launch",
      [](std::uintptr_t stream) {
        invalid_launch(as_stream(stream));
        check_launch("_invalid_launch");
      },
      py::arg("stream"),
      "TEST-ONLY. Launches with 2048 threads per block; always raises RuntimeError.");
}

}  // namespace gpunet
