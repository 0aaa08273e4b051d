// norm.cpp -- Python bindings of csrc/kernels/norm.cu (layer norm).
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/norm.h"

namespace gpunet {
namespace {

// x must be (rows, cols); returns {rows, cols}.
std::vector<int64_t> rows_cols(const View& x, const char* name) {
  require_ndim(x, name, 2);
  return x.shape;
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def(
      "layernorm_forward",
      [](py::handle x_obj, py::handle w_obj, py::handle b_obj, py::handle y_obj, py::handle mean_obj,
         py::handle rstd_obj, float eps, std::uintptr_t stream) {
        const View x = as_array(x_obj, "x", "float32");
        const auto rc = rows_cols(x, "x");
        const View w = as_array(w_obj, "weight", "float32");
        const View b = as_array(b_obj, "bias", "float32");
        const View y = as_array(y_obj, "y", "float32");
        const View mean = as_array(mean_obj, "mean", "float32");
        const View rstd = as_array(rstd_obj, "rstd", "float32");
        require_shape(w, "weight", {rc[1]});
        require_shape(b, "bias", {rc[1]});
        require_same_shape(x, "x", y, "y");
        require_shape(mean, "mean", {rc[0]});
        require_shape(rstd, "rstd", {rc[0]});
        require_writable(y, "y");
        require_writable(mean, "mean");
        require_writable(rstd, "rstd");
        if (!(eps >= 0.f)) throw py::value_error("argument 'eps': expected >= 0, got " + std::to_string(eps));
        auto guard = vouch({x, w, b, y, mean, rstd});
        layernorm_forward(x.ptr<float>(), w.ptr<float>(), b.ptr<float>(), y.ptr<float>(), mean.ptr<float>(),
                          rstd.ptr<float>(), rc[0], rc[1], eps, as_stream(stream));
        check_launch("layernorm_forward");
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"), py::arg("mean"), py::arg("rstd"),
      py::arg("eps"), py::arg("stream"),
      "Layer norm of each row of x (rows, cols): y = (x - mean)/sqrt(var + eps)*weight + bias\n"
      "(biased variance); writes y (rows, cols), mean (rows,) and rstd (rows,) = 1/sqrt(var + eps).\n"
      "All float32, C-contiguous; weight and bias (cols,).");
  m.def(
      "layernorm_backward",
      [](py::handle x_obj, py::handle w_obj, py::handle mean_obj, py::handle rstd_obj, py::handle dy_obj,
         py::handle dx_obj, py::handle dw_obj, py::handle db_obj, py::handle partial_obj, std::uintptr_t stream) {
        const View x = as_array(x_obj, "x", "float32");
        const auto rc = rows_cols(x, "x");
        const View w = as_array(w_obj, "weight", "float32");
        const View mean = as_array(mean_obj, "mean", "float32");
        const View rstd = as_array(rstd_obj, "rstd", "float32");
        const View dy = as_array(dy_obj, "dy", "float32");
        const View dx = as_array(dx_obj, "dx", "float32");
        const View dw = as_array(dw_obj, "dweight", "float32");
        const View db = as_array(db_obj, "dbias", "float32");
        const View partial = as_array(partial_obj, "partial", "float32");
        require_shape(w, "weight", {rc[1]});
        require_shape(mean, "mean", {rc[0]});
        require_shape(rstd, "rstd", {rc[0]});
        require_same_shape(x, "x", dy, "dy");
        require_same_shape(x, "x", dx, "dx");
        require_shape(dw, "dweight", {rc[1]});
        require_shape(db, "dbias", {rc[1]});
        require_ndim(partial, "partial", 3);
        const int64_t chunks = partial.shape[1];
        require_shape(partial, "partial", {2, chunks, rc[1]});
        if (chunks < 1 || chunks > 65535)
          throw py::value_error("argument 'partial': expected (2, chunks, cols) with 1 <= chunks <= 65535, got shape " +
                                detail::shape_str(partial.shape));
        require_writable(dx, "dx");
        require_writable(dw, "dweight");
        require_writable(db, "dbias");
        require_writable(partial, "partial");
        auto guard = vouch({x, w, mean, rstd, dy, dx, dw, db, partial});
        layernorm_backward(x.ptr<float>(), w.ptr<float>(), mean.ptr<float>(), rstd.ptr<float>(), dy.ptr<float>(),
                           dx.ptr<float>(), dw.ptr<float>(), db.ptr<float>(), partial.ptr<float>(), chunks, rc[0],
                           rc[1], as_stream(stream));
        check_launch("layernorm_backward");
      },
      py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("dy"), py::arg("dx"),
      py::arg("dweight"), py::arg("dbias"), py::arg("partial"), py::arg("stream"),
      "Layer norm backward: dx (rows, cols) and the overwritten dweight, dbias (cols,) from the\n"
      "forward's x, weight, mean, rstd and dy. partial: float32 workspace (2, chunks, cols); the\n"
      "rows are summed in `chunks` slices and then in order, so the result is bitwise reproducible.");
}

}  // namespace gpunet
