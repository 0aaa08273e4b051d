// norm.cpp -- Python bindings of csrc/kernels/norm.cu (layer norm).
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/norm.h"

namespace gpunet {

void bind_norm(py::module_& m) {
  m.def(
      "layernorm_forward",
      [](py::handle x_obj, py::handle w_obj, py::handle b_obj, py::handle y_obj, py::handle mean_obj,
         py::handle rstd_obj, float eps, std::uintptr_t stream) {
        const View x = view_of(x_obj, "x"), w = view_of(w_obj, "weight"), b = view_of(b_obj, "bias"),
                   y = view_of(y_obj, "y");
        const Storage storage = same_storage({{&x, "x"}, {&w, "weight"}, {&b, "bias"}, {&y, "y"}});
        require_writable(y, "y");
        const auto [mean, rstd] = float32_outputs({{mean_obj, "mean"}, {rstd_obj, "rstd"}});
        require_ndim(x, "x", 2);
        const int64_t rows = x.shape[0], cols = x.shape[1];
        require_shape(w, "weight", {cols});
        require_shape(b, "bias", {cols});
        require_same_shape(x, "x", y, "y");
        require_shape(mean, "mean", {rows});
        require_shape(rstd, "rstd", {rows});
        if (!(eps >= 0.f)) throw py::value_error("argument 'eps': expected >= 0, got " + std::to_string(eps));
        auto guard = vouch({x, w, b, y, mean, rstd});
        layernorm_forward(storage, x.data, w.data, b.data, y.data, mean.ptr<float>(), rstd.ptr<float>(), rows, cols,
                          eps, as_stream(stream));
        check_launch("layernorm_forward");
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"), py::arg("mean"), py::arg("rstd"),
      py::arg("eps"), py::arg("stream"),
      "Layer norm of each row of x (rows, cols): y = (x - mean)/sqrt(var + eps)*weight + bias\n"
      "(biased variance); writes y (rows, cols), mean (rows,) and rstd (rows,) = 1/sqrt(var + eps).\n"
      "C-contiguous; weight and bias (cols,); x, weight, bias and y of one dtype: float32, float16\n"
      "or bfloat16 (its bits as int16), computed in float32; mean and rstd float32.");
  m.def(
      "layernorm_backward",
      [](py::handle x_obj, py::handle w_obj, py::handle mean_obj, py::handle rstd_obj, py::handle dy_obj,
         py::handle dx_obj, py::handle dw_obj, py::handle db_obj, py::handle partial_obj, std::uintptr_t stream) {
        const View x = view_of(x_obj, "x"), w = view_of(w_obj, "weight"), dy = view_of(dy_obj, "dy"),
                   dx = view_of(dx_obj, "dx"), dw = view_of(dw_obj, "dweight"), db = view_of(db_obj, "dbias");
        const Storage storage = same_storage(
            {{&x, "x"}, {&w, "weight"}, {&dy, "dy"}, {&dx, "dx"}, {&dw, "dweight"}, {&db, "dbias"}});
        for (const auto& [v, name] : {std::pair{&dx, "dx"}, {&dw, "dweight"}, {&db, "dbias"}})
          require_writable(*v, name);
        const auto [mean, rstd] = float32_arrays({{mean_obj, "mean"}, {rstd_obj, "rstd"}});
        const auto [partial] = float32_outputs({{partial_obj, "partial"}});
        require_ndim(x, "x", 2);
        const int64_t rows = x.shape[0], cols = x.shape[1];
        require_shape(w, "weight", {cols});
        require_shape(mean, "mean", {rows});
        require_shape(rstd, "rstd", {rows});
        require_same_shape(x, "x", dy, "dy");
        require_same_shape(x, "x", dx, "dx");
        require_shape(dw, "dweight", {cols});
        require_shape(db, "dbias", {cols});
        require_ndim(partial, "partial", 3);
        const int64_t chunks = partial.shape[1];
        require_shape(partial, "partial", {2, chunks, cols});
        if (chunks < 1 || chunks > 65535)
          throw py::value_error("argument 'partial': expected (2, chunks, cols) with 1 <= chunks <= 65535, got shape " +
                                detail::shape_str(partial.shape));
        auto guard = vouch({x, w, mean, rstd, dy, dx, dw, db, partial});
        layernorm_backward(storage, x.data, w.data, mean.ptr<float>(), rstd.ptr<float>(), dy.data, dx.data,
                           dw.data, db.data, partial.ptr<float>(), chunks, rows, cols, as_stream(stream));
        check_launch("layernorm_backward");
      },
      py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("dy"), py::arg("dx"),
      py::arg("dweight"), py::arg("dbias"), py::arg("partial"), py::arg("stream"),
      "Layer norm backward: dx (rows, cols) and the overwritten dweight, dbias (cols,) from the\n"
      "forward's x, weight, mean, rstd and dy (x, weight, dy, dx, dweight, dbias of one dtype, as in\n"
      "layernorm_forward). partial: float32 workspace (2, chunks, cols); the\n"
      "rows are summed in `chunks` slices and then in order, so the result is bitwise reproducible.");
}

}  // namespace gpunet
