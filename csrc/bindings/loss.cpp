// loss.cpp -- Python bindings of csrc/kernels/loss.cu: softmax cross-entropy
// on class indices, fused with log-softmax.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "common/error_flag.h"
#include "kernels/loss.h"

namespace gpunet {
namespace {

// What forward and backward both read: logits (rows, C) with C >= 1, float32,
// float16 or bfloat16 (its bits as int16: `storage`),
// target int64 (rows,) and the class weights, float32 (C,) or an empty
// array for "no weights" (then `weight` is nullptr).
struct LossInputs {
  View x, t, w;
  Storage storage;
  const float* weight;
  int64_t rows, cols;
};
LossInputs cross_entropy_inputs(py::handle x_obj, py::handle t_obj, py::handle w_obj) {
  const View x = view_of(x_obj, "logits");
  const Storage storage = same_storage({{&x, "logits"}});
  require_rows(x, "logits");
  const int64_t rows = x.shape[0], cols = x.shape[1];
  if (cols == 0)
    throw py::value_error(detail::arg("logits") + "needs at least one class (column), got shape " +
                          detail::shape_str(x.shape));
  const View t = as_array(t_obj, "target", "int64");
  require_shape(t, "target", {rows});
  const View w = as_array(w_obj, "weight", "float32");
  require_ndim(w, "weight", 1);
  if (w.shape[0] != 0) require_shape(w, "weight", {cols});
  return {x, t, w, storage, w.shape[0] == 0 ? nullptr : w.ptr<float>(), rows, cols};
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def(
      "cross_entropy_forward",
      [](py::handle x_obj, py::handle t_obj, py::handle w_obj, py::handle loss_obj, py::handle lse_obj,
         int64_t ignore_index, float eps, py::handle flag_obj, std::uintptr_t stream) {
        const auto [x, t, w, storage, weight, rows, cols] = cross_entropy_inputs(x_obj, t_obj, w_obj);
        const auto [loss, lse] = float32_outputs({{loss_obj, "loss"}, {lse_obj, "lse"}});
        require_shape(loss, "loss", {rows});
        require_shape(lse, "lse", {rows, 2});
        const View flag = as_error_flag(flag_obj);
        require_outputs_apart({loss, lse, flag}, {x, t, w});
        auto guard = vouch({x, t, w, loss, lse, flag});
        cross_entropy_forward(storage, x.data, t.ptr<int64_t>(), weight, loss.ptr<float>(), lse.ptr<float>(), rows,
                              (int)cols, ignore_index, eps, flag.ptr<int64_t>(), as_stream(stream));
        check_launch("cross_entropy_forward");
      },
      py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("loss"), py::arg("lse"),
      py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("flag"), py::arg("stream"),
      "Per-row softmax cross-entropy: logits (rows, C) float32, float16 or bfloat16 (its\n"
      "bits as int16), read in float32; target int64 (rows,), weight float32 (C,) or empty\n"
      "(0,) for none; writes float32 loss (rows,) (0 for ignore_index rows) and lse (rows, 2),\n"
      "the row's log-sum-exp as (max, log sum exp(logits - max)). No probabilities are\n"
      "stored. An out-of-range target counts 0\n"
      "and is reported in flag, int64 (4,): (1, target, C, ignore_index) unless already set.");
  m.def(
      "cross_entropy_backward",
      [](py::handle x_obj, py::handle t_obj, py::handle w_obj, py::handle ws_obj, py::handle lse_obj,
         py::handle dloss_obj, py::handle dx_obj, int64_t ignore_index, float eps, std::uintptr_t stream) {
        const auto [x, t, w, storage, weight, rows, cols] = cross_entropy_inputs(x_obj, t_obj, w_obj);
        const auto [ws, lse, dloss] =
            float32_arrays({{ws_obj, "weight_sum"}, {lse_obj, "lse"}, {dloss_obj, "dloss"}});
        if (weight != nullptr) require_shape(ws, "weight_sum", {1});
        require_shape(lse, "lse", {rows, 2});
        require_shape(dloss, "dloss", {rows});
        const View dx = view_of(dx_obj, "dlogits");
        same_storage({{&x, "logits"}, {&dx, "dlogits"}});
        require_rows(dx, "dlogits");
        require_writable(dx, "dlogits");
        require_same_shape(x, "logits", dx, "dlogits");
        require_outputs_apart({dx}, {x, t, w, ws, lse, dloss});
        auto guard = vouch({x, t, w, ws, lse, dloss, dx});
        cross_entropy_backward(storage, x.data, t.ptr<int64_t>(), weight, ws.ptr<float>(), lse.ptr<float>(),
                               dloss.ptr<float>(), dx.data, rows, (int)cols, ignore_index, eps,
                               as_stream(stream));
        check_launch("cross_entropy_backward");
      },
      py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("weight_sum"), py::arg("lse"),
      py::arg("dloss"), py::arg("dlogits"), py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("stream"),
      "dlogits = dloss[row] * (sum(a) * exp(logits - lse) - a), a the smoothed, weighted\n"
      "target distribution (0 for rows whose target is ignore_index or out of range);\n"
      "arguments as cross_entropy_forward, dlogits of the logits' dtype (rounded once),\n"
      "plus weight_sum float32\n"
      "(1,) = sum(weight) (ignored when weight is empty), lse from the forward and dloss\n"
      "float32 (rows,), the gradient of each row's loss.");
}

}  // namespace gpunet
