// testing.cpp -- bindings of the TEST-ONLY kernels and hooks in
// csrc/kernels/testing.cu (leading underscore: not part of gpunet's API).
#include <string>

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
  m.def(
      "_launch_blocks",
      [](const std::string& shape, int64_t n) {
        struct Named {
          const char* name;
          Geometry geometry;
        };
        constexpr Named kShapes[] = {{"grid_stride", Geometry::GridStride},
                                     {"elementwise", Geometry::Elementwise},
                                     {"elementwise_vec4", Geometry::ElementwiseVec4},
                                     {"warp_rows", Geometry::WarpRows},
                                     {"block_rows", Geometry::BlockRows},
                                     {"grid_x", Geometry::GridX},
                                     {"grid_y", Geometry::GridY},
                                     {"grid_z", Geometry::GridZ}};
        require_at_least(n, 1, "n");
        for (const Named& s : kShapes)
          if (shape == s.name) return launch_blocks(s.geometry, n);
        throw py::value_error("argument 'shape': unknown launch shape '" + shape +
                              "'; valid: grid_stride, elementwise, elementwise_vec4, warp_rows, block_rows, "
                              "grid_x, grid_y, grid_z");
      },
      py::arg("shape"), py::arg("n"),
      "TEST-ONLY. Blocks a launcher of this shape asks for n items (elements or rows):\n"
      "grid_stride, elementwise (scalar path), elementwise_vec4 (float4 path), warp_rows\n"
      "(a warp per row), block_rows (a block per row).");
}

}  // namespace gpunet
