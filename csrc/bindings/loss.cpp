// loss.cpp -- Python bindings of csrc/kernels/loss.cu: softmax cross-entropy
// on class indices, fused with log-softmax.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/loss.h"

namespace gpunet {
namespace {

// Class indices: int64 of shape (rows,).
View as_targets(py::handle obj, int64_t rows) {
  const View t = as_array(obj, "target", "int64");
  require_shape(t, "target", {rows});
  return t;
}

// Optional class weights: float32 (cols,), or an empty array for "no weights".
const float* weight_ptr(const View& w, int64_t cols) {
  require_ndim(w, "weight", 1);
  if (w.shape[0] == 0) return nullptr;
  require_shape(w, "weight", {cols});
  return w.ptr<float>();
}

void require_classes(const View& x, const char* name) {
  if (x.shape[1] == 0) throw py::value_error(detail::arg(name) + "needs at least one class (column), got shape " +
                                             detail::shape_str(x.shape));
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def(
      "cross_entropy_forward",
      [](py::handle x_obj, py::handle t_obj, py::handle w_obj, py::handle loss_obj, py::handle lse_obj,
         int64_t ignore_index, float eps, std::uintptr_t stream) {
        const View x = as_rows(x_obj, "logits");
        require_classes(x, "logits");
        const int64_t rows = x.shape[0], cols = x.shape[1];
        const View t = as_targets(t_obj, rows);
        const View w = as_array(w_obj, "weight", "float32");
        const float* weight = weight_ptr(w, cols);
        const View loss = as_array(loss_obj, "loss", "float32");
        const View lse = as_array(lse_obj, "lse", "float32");
        require_writable(loss, "loss");
        require_writable(lse, "lse");
        require_shape(loss, "loss", {rows});
        require_shape(lse, "lse", {rows, 2});
        auto guard = vouch({x, t, w, loss, lse});
        cross_entropy_forward(x.ptr<float>(), t.ptr<int64_t>(), weight, loss.ptr<float>(), lse.ptr<float>(), rows,
                              (int)cols, ignore_index, eps, as_stream(stream));
        check_launch("cross_entropy_forward");
      },
      py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("loss"), py::arg("lse"),
      py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("stream"),
      "Per-row softmax cross-entropy: logits float32 (rows, C), target int64 (rows,),\n"
      "weight float32 (C,) or empty (0,) for none; writes loss (rows,) (0 for\n"
      "ignore_index rows, NaN for out-of-range targets) and lse (rows, 2), the row's\n"
      "log-sum-exp as (max, log sum exp(logits - max)). No probabilities are stored.");
  m.def(
      "cross_entropy_backward",
      [](py::handle x_obj, py::handle t_obj, py::handle w_obj, py::handle ws_obj, py::handle lse_obj,
         py::handle dloss_obj, py::handle dx_obj, int64_t ignore_index, float eps, std::uintptr_t stream) {
        const View x = as_rows(x_obj, "logits");
        require_classes(x, "logits");
        const int64_t rows = x.shape[0], cols = x.shape[1];
        const View t = as_targets(t_obj, rows);
        const View w = as_array(w_obj, "weight", "float32");
        const float* weight = weight_ptr(w, cols);
        const View ws = as_array(ws_obj, "weight_sum", "float32");
        if (weight != nullptr) require_shape(ws, "weight_sum", {1});
        const View lse = as_array(lse_obj, "lse", "float32");
        const View dloss = as_array(dloss_obj, "dloss", "float32");
        const View dx = as_rows(dx_obj, "dlogits");
        require_shape(lse, "lse", {rows, 2});
        require_shape(dloss, "dloss", {rows});
        require_writable(dx, "dlogits");
        require_same_shape(x, "logits", dx, "dlogits");
        auto guard = vouch({x, t, w, ws, lse, dloss, dx});
        cross_entropy_backward(x.ptr<float>(), t.ptr<int64_t>(), weight, ws.ptr<float>(), lse.ptr<float>(),
                               dloss.ptr<float>(), dx.ptr<float>(), rows, (int)cols, ignore_index, eps,
                               as_stream(stream));
        check_launch("cross_entropy_backward");
      },
      py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("weight_sum"), py::arg("lse"),
      py::arg("dloss"), py::arg("dlogits"), py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("stream"),
      "dlogits = dloss[row] * (sum(a) * exp(logits - lse) - a), a the smoothed, weighted\n"
      "target distribution; arguments as cross_entropy_forward, plus weight_sum float32\n"
      "(1,) = sum(weight) (ignored when weight is empty), lse from the forward and dloss\n"
      "float32 (rows,), the gradient of each row's loss.");
}

}  // namespace gpunet
