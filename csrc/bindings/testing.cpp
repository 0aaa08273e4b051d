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

void tc_ldmatrix_binding(py::handle src_obj, py::handle rows_obj, py::handle out_obj, int num, bool trans,
                         std::uintptr_t stream) {
  const View src = as_array(src_obj, "src", "int16");
  const View rows = as_array(rows_obj, "rows", "int32");
  const View out = as_array(out_obj, "out", "int32");
  require_shape(src, "src", {32, 8});
  require_shape(rows, "rows", {32});
  require_shape(out, "out", {32, 4});
  require_writable(out, "out");
  if (num != 1 && num != 2 && num != 4) throw py::value_error("argument 'num': expected 1, 2 or 4 but got " + std::to_string(num));
  const int* r = rows.ptr<int>();
  for (int l = 0; l < 32; ++l)
    if (r[l] < 0 || r[l] >= 32) throw py::value_error("argument 'rows': expected row indices in [0, 32)");
  auto guard = vouch({src, rows, out});
  tc_ldmatrix(src.ptr<uint16_t>(), r, out.ptr<uint32_t>(), num, trans, as_stream(stream));
  check_launch("_tc_ldmatrix");
}

void tc_mma_binding(py::handle a_obj, py::handle b_obj, py::handle c_obj, py::handle d_obj, const std::string& mode,
                    std::uintptr_t stream) {
  const View a = view_of(a_obj, "a"), b = view_of(b_obj, "b");
  const Storage s = same_storage({{&a, "a"}, {&b, "b"}});
  if (s == Storage::F32) throw py::type_error("argument 'a': expected dtype float16 or bfloat16 but got float32");
  TcMma m;
  if (mode == "direct") m = TcMma::Direct;
  else if (mode == "ldmatrix") m = TcMma::LdmatrixNMajor;
  else if (mode == "ldmatrix_trans") m = TcMma::LdmatrixTrans;
  else throw py::value_error("argument 'mode': expected direct, ldmatrix or ldmatrix_trans but got '" + mode + "'");
  const View c = as_array(c_obj, "c", "float32");
  const View d = as_array(d_obj, "d", "float32");
  require_shape(a, "a", {16, 16});
  require_shape(b, "b", m == TcMma::LdmatrixNMajor ? std::vector<int64_t>{8, 16} : std::vector<int64_t>{16, 8});
  require_shape(c, "c", {16, 8});
  require_shape(d, "d", {16, 8});
  require_writable(d, "d");
  auto guard = vouch({a, b, c, d});
  tc_mma(s, a.ptr<uint16_t>(), b.ptr<uint16_t>(), c.ptr<float>(), d.ptr<float>(), m, as_stream(stream));
  check_launch("_tc_mma");
}

void tc_cp_async_binding(py::handle src_obj, py::handle out_obj, bool racy, std::uintptr_t stream) {
  const View src = as_array(src_obj, "src", "float32");
  const View out = as_array(out_obj, "out", "float32");
  require_shape(src, "src", {3, 32, 4});
  require_shape(out, "out", {4, 3, 32, 4});
  require_writable(out, "out");
  auto guard = vouch({src, out});
  tc_cp_async(src.ptr<float>(), out.ptr<float>(), racy, as_stream(stream));
  check_launch("_tc_cp_async");
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
  m.def("_tc_ldmatrix", &tc_ldmatrix_binding, py::arg("src"), py::arg("rows"), py::arg("out"), py::arg("num"),
        py::arg("trans"), py::arg("stream"),
        "TEST-ONLY. ldmatrix x{num}[.trans] by one warp: src int16 (32, 8) rows in shared memory,\n"
        "lane l names row rows[l] (int32 (32,)); out int32 (32, 4) = each lane's registers.");
  m.def("_tc_mma", &tc_mma_binding, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"), py::arg("mode"),
        py::arg("stream"),
        "TEST-ONLY. d = a·b + c by one mma.sync m16n8k16: a (16, 16) float16 or bfloat16 bits (int16),\n"
        "b (16, 8) of the same type, or bᵀ (8, 16) for mode 'ldmatrix'; c, d float32 (16, 8).\n"
        "mode: direct (fragments from the documented layout), ldmatrix, ldmatrix_trans.");
  m.def("_tc_cp_async", &tc_cp_async_binding, py::arg("src"), py::arg("out"), py::arg("racy"), py::arg("stream"),
        "TEST-ONLY. cp.async groups of one warp: src float32 (3, 32, 4); out float32 (4, 3, 32, 4) =\n"
        "snapshots of the destinations before any wait, after wait<1>, wait<0>, commit + wait<0>.\n"
        "racy: no sentinel stores first (the first snapshot reads unwritten shared memory).");
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
