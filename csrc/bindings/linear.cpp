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
int64_t outer_extent(const View& y, const char* y_name, const View& b, const char* b_name, int64_t inner) {
  require_ndim(b, b_name, 1);
  const int64_t channels = b.shape[0];
  if (inner < 1) throw py::value_error("argument 'inner': must be >= 1 but got " + std::to_string(inner));
  if (channels > INT_MAX)  // one block per channel in bias_grad
    throw py::value_error("at most " + std::to_string(INT_MAX) + " channels, got " + std::to_string(channels));
  const int64_t row = checked_mul(channels, inner, "argument 'inner': channels * inner");
  if (row == 0 ? y.numel() != 0 : y.numel() % row != 0)
    throw py::value_error(detail::arg(y_name) + "expected (N, C, inner) elements with C = " + std::to_string(channels) +
                          " and inner = " + std::to_string(inner) + ", i.e. a multiple of " + std::to_string(row) +
                          ", but got shape " + detail::shape_str(y.shape));
  return row == 0 ? 0 : y.numel() / row;
}

// bias_add(y, b, inner) and bias_grad(dy, db, inner) take the same arguments:
// an array of N*C*inner elements and a (C,) vector of one storage type, the array
// written by bias_add and the vector by bias_grad.
// launch(array, vector, outer, channels, inner, stream).
template <class Launch>
auto bias_binding(const char* kernel, const char* array_name, const char* vector_name, bool array_written,
                  Launch launch) {
  return [=](py::handle array_obj, py::handle vector_obj, int64_t inner, std::uintptr_t stream) {
    const View array = view_of(array_obj, array_name), vector = view_of(vector_obj, vector_name);
    const Storage storage = same_storage({{&array, array_name}, {&vector, vector_name}});
    require_writable(array_written ? array : vector, array_written ? array_name : vector_name);
    const int64_t outer = outer_extent(array, array_name, vector, vector_name, inner);
    auto guard = vouch({array, vector});
    launch(storage, array.data, vector.data, outer, vector.shape[0], inner, as_stream(stream));
    check_launch(kernel);
  };
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def("bias_add", bias_binding("bias_add", "y", "b", true, bias_add), py::arg("y"), py::arg("b"), py::arg("inner"),
        py::arg("stream"),
        "y[n, c, i] += b[c] in place, y a contiguous array of N*C*inner elements\n"
        "(Linear: y (N, C), inner=1; Conv2d: y (N, C, H, W), inner=H*W), b (C,); float32,\n"
        "float16 or bfloat16 (its bits as int16), both the same; the sum in float32,\n"
        "rounded once.");
  m.def("bias_grad", bias_binding("bias_grad", "dy", "db", false, bias_grad), py::arg("dy"), py::arg("db"),
        py::arg("inner"), py::arg("stream"),
        "db[c] = sum of dy[n, c, i] over n and i (overwrites db); dy as y of bias_add,\n"
        "db (C,) of its dtype; accumulated in float32, rounded once. Deterministic: the\n"
        "same bits on every run.");
}

}  // namespace gpunet
