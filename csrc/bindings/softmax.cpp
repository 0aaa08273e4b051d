// softmax.cpp -- Python bindings of csrc/kernels/softmax.cu (convention in
// csrc/common/binding.h): softmax / log-softmax along the last axis of a
// (rows, cols) array.
#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/softmax.h"

namespace gpunet {

void bind_softmax(py::module_& m) {
  m.def(
      "softmax_forward",
      [](py::handle x_obj, py::handle y_obj, float beta, bool log, std::uintptr_t stream) {
        const View x = view_of(x_obj, "x"), y = view_of(y_obj, "y");
        const Storage storage = same_storage({{&x, "x"}, {&y, "y"}});
        require_rows(x, "x");
        require_writable(y, "y");
        require_same_shape(x, "x", y, "y");
        auto guard = vouch({x, y});
        softmax_forward(storage, x.data, y.data, x.shape[0], (int)x.shape[1], beta, log, as_stream(stream));
        check_launch(log ? "log_softmax_forward" : "softmax_forward");
      },
      py::arg("x"), py::arg("y"), py::arg("beta"), py::arg("log"), py::arg("stream"),
      "y = softmax(beta * x) along the last axis (log=True: log_softmax); x, y (rows, cols),\n"
      "C-contiguous, of one dtype: float32, float16 or bfloat16 (its bits as int16),\n"
      "computed in float32. Warp per row up to 1024 columns, online block per\n"
      "row beyond.");
  m.def(
      "softmax_backward",
      [](py::handle y_obj, py::handle dy_obj, py::handle dx_obj, float beta, bool log, std::uintptr_t stream) {
        const View y = view_of(y_obj, "y"), dy = view_of(dy_obj, "dy"), dx = view_of(dx_obj, "dx");
        const Storage storage = same_storage({{&y, "y"}, {&dy, "dy"}, {&dx, "dx"}});
        require_rows(y, "y");
        require_writable(dx, "dx");
        require_same_shape(y, "y", dy, "dy");
        require_same_shape(y, "y", dx, "dx");
        auto guard = vouch({y, dy, dx});
        softmax_backward(storage, y.data, dy.data, dx.data, y.shape[0], (int)y.shape[1], beta, log,
                         as_stream(stream));
        check_launch(log ? "log_softmax_backward" : "softmax_backward");
      },
      py::arg("y"), py::arg("dy"), py::arg("dx"), py::arg("beta"), py::arg("log"), py::arg("stream"),
      "dx from the forward output y and dy: beta*y*(dy - sum(dy*y)) for softmax,\n"
      "beta*(dy - exp(y)*sum(dy)) for log_softmax (sums along the last axis); dtypes as\n"
      "in softmax_forward.");
}

}  // namespace gpunet
