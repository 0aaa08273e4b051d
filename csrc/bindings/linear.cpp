// linear.cpp -- Python bindings of csrc/kernels/linear.cu (bias add and bias
// gradient of Linear and Conv2d).
#include <climits>
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/linear.h"

namespace gpunet {
namespace {

// y viewed as (outer, C, inner) with C = len(b): returns outer, or raises.
int64_t outer_extent(const View& y, const char* y_name, int64_t channels, int64_t inner) {
  if (inner < 1) throw py::value_error("argument 'inner': must be >= 1 but got " + std::to_string(inner));
  if (channels > INT_MAX)  // one block per channel in bias_grad
    throw py::value_error("at most " + std::to_string(INT_MAX) + " channels, got " + std::to_string(channels));
  const int64_t row = channels * inner;
  if (row == 0 ? y.numel() != 0 : y.numel() % row != 0)
    throw py::value_error(detail::arg(y_name) + "expected (N, C, inner) elements with C = " + std::to_string(channels) +
                          " and inner = " + std::to_string(inner) + ", i.e. a multiple of " + std::to_string(row) +
                          ", but got shape " + detail::shape_str(y.shape));
  return row == 0 ? 0 : y.numel() / row;
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def(
      "bias_add",
      [](py::handle y_obj, py::handle b_obj, int64_t inner, std::uintptr_t stream) {
        const View y = as_array(y_obj, "y", "float32");
        const View b = as_array(b_obj, "b", "float32");
        require_writable(y, "y");
        require_ndim(b, "b", 1);
        const int64_t outer = outer_extent(y, "y", b.shape[0], inner);
        auto guard = vouch({y, b});
        bias_add(y.ptr<float>(), b.ptr<float>(), outer, b.shape[0], inner, as_stream(stream));
        check_launch("bias_add");
      },
      py::arg("y"), py::arg("b"), py::arg("inner"), py::arg("stream"),
      "y[n, c, i] += b[c] in place, y a contiguous float32 array of N*C*inner elements\n"
      "(Linear: y (N, C), inner=1; Conv2d: y (N, C, H, W), inner=H*W), b float32 (C,).");
  m.def(
      "bias_grad",
      [](py::handle dy_obj, py::handle db_obj, int64_t inner, std::uintptr_t stream) {
        const View dy = as_array(dy_obj, "dy", "float32");
        const View db = as_array(db_obj, "db", "float32");
        require_writable(db, "db");
        require_ndim(db, "db", 1);
        const int64_t outer = outer_extent(dy, "dy", db.shape[0], inner);
        auto guard = vouch({dy, db});
        bias_grad(dy.ptr<float>(), db.ptr<float>(), outer, db.shape[0], inner, as_stream(stream));
        check_launch("bias_grad");
      },
      py::arg("dy"), py::arg("db"), py::arg("inner"), py::arg("stream"),
      "db[c] = sum of dy[n, c, i] over n and i (overwrites db); dy as y of bias_add,\n"
      "db float32 (C,). Deterministic: the same bits on every run.");
}

}  // namespace gpunet
