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
        const View weight = view_of(weight_o, "weight"), out = view_of(out_o, "out");
        const Storage storage = same_storage({{&weight, "weight"}, {&out, "out"}});
        const View idx = as_array(idx_o, "idx", "int64");
        require_ndim(weight, "weight", 2);
        require_ndim(idx, "idx", 1);
        require_shape(out, "out", {idx.shape[0], weight.shape[1]});
        require_writable(out, "out");
        const View flag = as_error_flag(flag_o);
        require_outputs_apart({out, flag}, {weight, idx});
        auto guard = vouch({weight, idx, out, flag});
        embedding_forward(storage, weight.data, idx.ptr<int64_t>(), out.data, idx.shape[0], weight.shape[0],
                          weight.shape[1], flag.ptr<int64_t>(), as_stream(stream));
        check_launch("embedding_forward");
      },
      py::arg("weight"), py::arg("idx"), py::arg("out"), py::arg("flag"), py::arg("stream"),
      "out[n] = weight[idx[n]]: weight (V, D), idx (N,) int64, out (N, D) of weight's dtype:\n"
      "float32, float16 or bfloat16 (its bits as int16).\n"
      "An index outside [0, V) gives a row of zeros and is reported in flag, int64 (4,):\n"
      "(2, index, V, 0) unless already set.");
  m.def(
      "embedding_backward",
      [](py::handle dy_o, py::handle order_o, py::handle rowptr_o, py::handle dw_o, int64_t padding_idx,
         std::uintptr_t stream) {
        const View dy = view_of(dy_o, "dy"), dw = view_of(dw_o, "dweight");
        const Storage storage = same_storage({{&dy, "dy"}, {&dw, "dweight"}});
        const View order = as_array(order_o, "order", "int64");
        const View row_ptr = as_array(rowptr_o, "row_ptr", "int64");
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
        embedding_backward(storage, dy.data, order.ptr<int64_t>(), row_ptr.ptr<int64_t>(), dw.data, N, V, D,
                           padding_idx, as_stream(stream));
        check_launch("embedding_backward");
      },
      py::arg("dy"), py::arg("order"), py::arg("row_ptr"), py::arg("dweight"), py::arg("padding_idx"),
      py::arg("stream"),
      "Deterministic embedding weight gradient: dweight[v] = sum of dy[order[p]] for p in\n"
      "[row_ptr[v], row_ptr[v+1]) in that order, summed in float32; dy (N, D), order (N,) int64\n"
      "(the positions sorted by index), row_ptr (V+1,) int64, dweight (V, D) of dy's dtype\n"
      "(float32, float16 or bfloat16 as int16; overwritten, each value rounded once; zero for\n"
      "row padding_idx, -1 for none).");
}

}  // namespace gpunet
