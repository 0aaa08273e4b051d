// embedding.cpp -- Python bindings of csrc/kernels/embedding.cu.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "common/error_flag.h"
#include "kernels/embedding.h"

namespace gpunet {

void bind_embedding(py::module_& m) {
  m.def(
      "embedding_forward",
      [](py::handle weight_o, py::handle idx_o, py::handle out_o, py::handle flag_o, std::uintptr_t stream) {
        const View weight = as_array(weight_o, "weight", "float32");
        const View idx = as_array(idx_o, "idx", "int64");
        const View out = as_array(out_o, "out", "float32");
        require_ndim(weight, "weight", 2);
        require_ndim(idx, "idx", 1);
        require_shape(out, "out", {idx.shape[0], weight.shape[1]});
        require_writable(out, "out");
        const View flag = as_error_flag(flag_o);
        require_outputs_apart({out, flag}, {weight, idx});
        auto guard = vouch({weight, idx, out, flag});
        embedding_forward(weight.ptr<float>(), idx.ptr<int64_t>(), out.ptr<float>(), idx.shape[0], weight.shape[0],
                          weight.shape[1], flag.ptr<int64_t>(), as_stream(stream));
        check_launch("embedding_forward");
      },
      py::arg("weight"), py::arg("idx"), py::arg("out"), py::arg("flag"), py::arg("stream"),
      "out[n] = weight[idx[n]]: weight (V, D) float32, idx (N,) int64, out (N, D) float32.\n"
      "An index outside [0, V) gives a row of zeros and is reported in flag, int64 (4,):\n"
      "(2, index, V, 0) unless already set.");
  m.def(
      "embedding_backward",
      [](py::handle dy_o, py::handle order_o, py::handle rowptr_o, py::handle dw_o, int64_t padding_idx,
         std::uintptr_t stream) {
        const View dy = as_array(dy_o, "dy", "float32");
        const View order = as_array(order_o, "order", "int64");
        const View row_ptr = as_array(rowptr_o, "row_ptr", "int64");
        const View dw = as_array(dw_o, "dweight", "float32");
        require_ndim(dy, "dy", 2);
        require_ndim(dw, "dweight", 2);
        require_writable(dw, "dweight");
        const int64_t N = dy.shape[0], V = dw.shape[0], D = dw.shape[1];
        require_shape(dy, "dy", {N, D});
        require_shape(order, "order", {N});
        require_shape(row_ptr, "row_ptr", {V + 1});
        if (padding_idx < -1 || padding_idx >= V)
          throw py::value_error("argument 'padding_idx': expected -1 (none) or a row in [0, " + std::to_string(V) +
                                ") but got " + std::to_string(padding_idx));
        require_outputs_apart({dw}, {dy, order, row_ptr});
        auto guard = vouch({dy, order, row_ptr, dw});
        embedding_backward(dy.ptr<float>(), order.ptr<int64_t>(), row_ptr.ptr<int64_t>(), dw.ptr<float>(), N, V, D,
                           padding_idx, as_stream(stream));
        check_launch("embedding_backward");
      },
      py::arg("dy"), py::arg("order"), py::arg("row_ptr"), py::arg("dweight"), py::arg("padding_idx"),
      py::arg("stream"),
      "Deterministic embedding weight gradient: dweight[v] = sum of dy[order[p]] for p in\n"
      "[row_ptr[v], row_ptr[v+1]) in that order; dy (N, D) float32, order (N,) int64 (the\n"
      "positions sorted by index), row_ptr (V+1,) int64, dweight (V, D) float32 (overwritten;\n"
      "zero for row padding_idx, -1 for none).");
}

}  // namespace gpunet
