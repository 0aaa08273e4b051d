// activation.cpp -- Python bindings of csrc/kernels/activation.cu; the
// reference example of the convention in csrc/common/binding.h.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/activation.h"

namespace gpunet {
namespace {

struct ActName {
  const char* name;
  Act act;
};
constexpr ActName kActs[] = {
    {"relu", Act::Relu}, {"leaky_relu", Act::LeakyRelu}, {"sigmoid", Act::Sigmoid}, {"tanh", Act::Tanh},
    {"softsign", Act::Softsign}, {"gelu", Act::Gelu}, {"softplus", Act::Softplus},
};

// ValueError listing the valid kinds; also rejects a softplus beta of 0
// (the formula divides by it).
Act parse_kind(const std::string& kind, float alpha) {
  for (const auto& a : kActs) {
    if (kind != a.name) continue;
    if (a.act == Act::Softplus && alpha == 0.f)
      throw py::value_error("softplus: beta (passed as alpha) must be nonzero");
    return a.act;
  }
  std::string valid;
  for (const auto& a : kActs) valid += std::string(valid.empty() ? "" : ", ") + a.name;
  throw py::value_error("unknown activation kind '" + kind + "'; valid kinds: " + valid);
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def(
      "act_forward",
      [](const std::string& kind, py::handle x_obj, py::handle y_obj, float alpha, float beta,
         std::uintptr_t stream) {
        const Act act = parse_kind(kind, alpha);
        const View x = view_of(x_obj, "x"), y = view_of(y_obj, "y");
        const Storage storage = same_storage({{&x, "x"}, {&y, "y"}});
        require_writable(y, "y");
        require_same_shape(x, "x", y, "y");
        auto guard = vouch({x, y});
        act_forward(act, storage, x.data, y.data, x.numel(), alpha, beta, as_stream(stream));
        check_launch("act_forward(" + kind + ")");
      },
      py::arg("kind"), py::arg("x"), py::arg("y"), py::arg("alpha"), py::arg("beta"), py::arg("stream"),
      "y = f(x) elementwise, computed in float32; float32, float16 or bfloat16 (its bits as\n"
      "int16), C-contiguous, same shape and dtype; y may be x (in place).\n"
      "kind: relu, leaky_relu, sigmoid, tanh, softsign, gelu (exact erf form), softplus.\n"
      "alpha: negative_slope for leaky_relu, beta for softplus; beta: threshold for\n"
      "softplus (x where alpha*x > beta). Unused parameters are ignored.");
  m.def(
      "act_backward",
      [](const std::string& kind, py::handle x_obj, py::handle y_obj, py::handle dy_obj, py::handle dx_obj,
         float alpha, float beta, std::uintptr_t stream) {
        const Act act = parse_kind(kind, alpha);
        const bool uses_y = act_backward_uses_output(act);
        const char* in_name = uses_y ? "y" : "x";
        const View in = view_of(uses_y ? y_obj : x_obj, in_name);
        const View dy = view_of(dy_obj, "dy"), dx = view_of(dx_obj, "dx");
        const Storage storage = same_storage({{&in, in_name}, {&dy, "dy"}, {&dx, "dx"}});
        require_writable(dx, "dx");
        require_same_shape(in, in_name, dy, "dy");
        require_same_shape(in, in_name, dx, "dx");
        auto guard = vouch({in, dy, dx});
        act_backward(act, storage, in.data, dy.data, dx.data, in.numel(), alpha, beta, as_stream(stream));
        check_launch("act_backward(" + kind + ")");
      },
      py::arg("kind"), py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("dx"), py::arg("alpha"), py::arg("beta"),
      py::arg("stream"),
      "dx = dy * f'(x) elementwise; alpha, beta as in act_forward. relu, sigmoid and\n"
      "tanh read the forward output y (x is ignored and may be None); the others read\n"
      "the input x (y is ignored and may be None). See act_backward_input(kind).");
  m.def(
      "act_backward_input",
      [](const std::string& kind) { return act_backward_uses_output(parse_kind(kind, 1.f)) ? "y" : "x"; },
      py::arg("kind"), "'y' if act_backward(kind, ...) reads the forward output, 'x' if it reads the input.");
}

}  // namespace gpunet
