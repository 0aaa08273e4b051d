// rnn.cpp -- Python bindings of csrc/kernels/rnn.cu (LSTM, GRU and RNN cell steps).
// Optional arrays (biases, missing gradients) are passed as None and reach
// the kernels as null pointers.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/rnn.h"

namespace gpunet {
namespace {

// A float32 C-contiguous array of exactly `shape`.
View shaped(py::handle obj, const char* name, const std::vector<int64_t>& shape) {
  View v = as_array(obj, name, "float32");
  require_shape(v, name, shape);
  return v;
}

View output(py::handle obj, const char* name, const std::vector<int64_t>& shape) {
  View v = shaped(obj, name, shape);
  require_writable(v, name);
  return v;
}

// None, or a float32 C-contiguous array of exactly `shape`. None gives an
// empty View: its ptr() is nullptr (the kernels' "absent") and vouch() takes it.
View optional(py::handle obj, const char* name, const std::vector<int64_t>& shape) {
  return obj.is_none() ? View{} : shaped(obj, name, shape);
}

// (B, H) from the 2-d state array that fixes them (the gates are 4H wide).
std::pair<int64_t, int64_t> state_dims(const View& v, const char* name) {
  require_ndim(v, name, 2);
  checked_mul(4, v.shape[1], detail::arg(name) + "the gate width 4 * " + std::to_string(v.shape[1]));
  return {v.shape[0], v.shape[1]};
}

}  // namespace

void bind_rnn(py::module_& m) {
  m.def(
      "lstm_cell_forward",
      [](py::handle xg_o, py::handle hg_o, py::handle bhh_o, py::handle cprev_o, py::handle gates_o, py::handle h_o,
         py::handle c_o, std::uintptr_t stream) {
        const View c_prev = as_array(cprev_o, "c_prev", "float32");
        const auto [B, H] = state_dims(c_prev, "c_prev");
        const View xg = shaped(xg_o, "xg", {B, 4 * H});
        const View hg = shaped(hg_o, "hg", {B, 4 * H});
        const View b_hh = optional(bhh_o, "b_hh", {4 * H});
        const View gates = output(gates_o, "gates", {B, 4 * H});
        const View h = output(h_o, "h", {B, H});
        const View c = output(c_o, "c", {B, H});
        auto guard = vouch({xg, hg, b_hh, c_prev, gates, h, c});
        lstm_cell_forward(xg.ptr<float>(), hg.ptr<float>(), b_hh.ptr<float>(), c_prev.ptr<float>(),
                          gates.ptr<float>(), h.ptr<float>(), c.ptr<float>(), B, H, as_stream(stream));
        check_launch("lstm_cell_forward");
      },
      py::arg("xg"), py::arg("hg"), py::arg("b_hh"), py::arg("c_prev"), py::arg("gates"), py::arg("h"), py::arg("c"),
      py::arg("stream"),
      "One LSTM step. xg = x W_ih^T + b_ih and hg = h_prev W_hh^T, (B, 4H) float32, gate\n"
      "blocks i, f, g, o; b_hh (4H,) or None; c_prev (B, H). Writes the activated gates\n"
      "(B, 4H; may be xg itself), h and c (B, H).");
  m.def(
      "lstm_cell_backward",
      [](py::handle gates_o, py::handle cprev_o, py::handle c_o, py::handle dy_o, py::handle dh_o, py::handle dc_o,
         py::handle dgates_o, py::handle dcprev_o, std::uintptr_t stream) {
        const View c_prev = as_array(cprev_o, "c_prev", "float32");
        const auto [B, H] = state_dims(c_prev, "c_prev");
        const View gates = shaped(gates_o, "gates", {B, 4 * H});
        const View c = shaped(c_o, "c", {B, H});
        const View dy = optional(dy_o, "dy", {B, H});
        const View dh = optional(dh_o, "dh_next", {B, H});
        const View dc = optional(dc_o, "dc_next", {B, H});
        const View dgates = output(dgates_o, "dgates", {B, 4 * H});
        const View dc_prev = output(dcprev_o, "dc_prev", {B, H});
        auto guard = vouch({gates, c_prev, c, dy, dh, dc, dgates, dc_prev});
        lstm_cell_backward(gates.ptr<float>(), c_prev.ptr<float>(), c.ptr<float>(), dy.ptr<float>(), dh.ptr<float>(),
                           dc.ptr<float>(), dgates.ptr<float>(), dc_prev.ptr<float>(), B, H, as_stream(stream));
        check_launch("lstm_cell_backward");
      },
      py::arg("gates"), py::arg("c_prev"), py::arg("c"), py::arg("dy"), py::arg("dh_next"), py::arg("dc_next"),
      py::arg("dgates"), py::arg("dc_prev"), py::arg("stream"),
      "Backward of one LSTM step from the saved activated gates (B, 4H), c_prev and c (B, H).\n"
      "dy, dh_next, dc_next (B, H) or None (zero). Writes the pre-activation gate\n"
      "gradients dgates (B, 4H) and dc_prev (B, H; may be dc_next itself).");
  m.def(
      "rnn_cell_forward",
      [](py::handle xg_o, py::handle hg_o, py::handle bhh_o, py::handle h_o, bool relu, std::uintptr_t stream) {
        const View xg = as_array(xg_o, "xg", "float32");
        const auto [B, H] = state_dims(xg, "xg");
        const View hg = shaped(hg_o, "hg", {B, H});
        const View b_hh = optional(bhh_o, "b_hh", {H});
        const View h = output(h_o, "h", {B, H});
        auto guard = vouch({xg, hg, b_hh, h});
        rnn_cell_forward(xg.ptr<float>(), hg.ptr<float>(), b_hh.ptr<float>(), h.ptr<float>(), B, H, relu,
                         as_stream(stream));
        check_launch("rnn_cell_forward");
      },
      py::arg("xg"), py::arg("hg"), py::arg("b_hh"), py::arg("h"), py::arg("relu"), py::arg("stream"),
      "One Elman RNN step h = act(xg + hg + b_hh), act relu (relu=True) or tanh; xg, hg, h\n"
      "(B, H) float32 (h may be xg itself), b_hh (H,) or None.");
  m.def(
      "rnn_cell_backward",
      [](py::handle h_o, py::handle dy_o, py::handle dh_o, py::handle dpre_o, bool relu, std::uintptr_t stream) {
        const View h = as_array(h_o, "h", "float32");
        const auto [B, H] = state_dims(h, "h");
        const View dy = optional(dy_o, "dy", {B, H});
        const View dh = optional(dh_o, "dh_next", {B, H});
        const View dpre = output(dpre_o, "dpre", {B, H});
        auto guard = vouch({h, dy, dh, dpre});
        rnn_cell_backward(h.ptr<float>(), dy.ptr<float>(), dh.ptr<float>(), dpre.ptr<float>(), B, H, relu,
                          as_stream(stream));
        check_launch("rnn_cell_backward");
      },
      py::arg("h"), py::arg("dy"), py::arg("dh_next"), py::arg("dpre"), py::arg("relu"), py::arg("stream"),
      "dpre = (dy + dh_next) * act'(h) for one RNN step from its output h (B, H) float32;\n"
      "dy and dh_next (B, H) or None.");
  m.def(
      "gru_cell_forward",
      [](py::handle xg_o, py::handle hg_o, py::handle bhh_o, py::handle hprev_o, py::handle gates_o, py::handle hn_o,
         py::handle h_o, std::uintptr_t stream) {
        const View h_prev = as_array(hprev_o, "h_prev", "float32");
        const auto [B, H] = state_dims(h_prev, "h_prev");
        const View xg = shaped(xg_o, "xg", {B, 3 * H});
        const View hg = shaped(hg_o, "hg", {B, 3 * H});
        const View b_hh = optional(bhh_o, "b_hh", {3 * H});
        const View gates = output(gates_o, "gates", {B, 3 * H});
        const View hn = output(hn_o, "hn", {B, H});
        const View h = output(h_o, "h", {B, H});
        auto guard = vouch({xg, hg, b_hh, h_prev, gates, hn, h});
        gru_cell_forward(xg.ptr<float>(), hg.ptr<float>(), b_hh.ptr<float>(), h_prev.ptr<float>(), gates.ptr<float>(),
                         hn.ptr<float>(), h.ptr<float>(), B, H, as_stream(stream));
        check_launch("gru_cell_forward");
      },
      py::arg("xg"), py::arg("hg"), py::arg("b_hh"), py::arg("h_prev"), py::arg("gates"), py::arg("hn"), py::arg("h"),
      py::arg("stream"),
      "One GRU step. xg = x W_ih^T + b_ih and hg = h_prev W_hh^T, (B, 3H) float32, gate\n"
      "blocks r, z, n; b_hh (3H,) or None; h_prev (B, H). Writes the activated gates\n"
      "(B, 3H; may be xg itself), hn = hg_n + b_hn and h (B, H).");
  m.def(
      "gru_cell_backward",
      [](py::handle gates_o, py::handle hn_o, py::handle hprev_o, py::handle dy_o, py::handle dh_o, py::handle dxg_o,
         py::handle dhg_o, py::handle dhprev_o, std::uintptr_t stream) {
        const View h_prev = as_array(hprev_o, "h_prev", "float32");
        const auto [B, H] = state_dims(h_prev, "h_prev");
        const View gates = shaped(gates_o, "gates", {B, 3 * H});
        const View hn = shaped(hn_o, "hn", {B, H});
        const View dy = optional(dy_o, "dy", {B, H});
        const View dh = optional(dh_o, "dh_next", {B, H});
        const View dxg = output(dxg_o, "dxg", {B, 3 * H});
        const View dhg = output(dhg_o, "dhg", {B, 3 * H});
        const View dh_prev = output(dhprev_o, "dh_prev", {B, H});
        auto guard = vouch({gates, hn, h_prev, dy, dh, dxg, dhg, dh_prev});
        gru_cell_backward(gates.ptr<float>(), hn.ptr<float>(), h_prev.ptr<float>(), dy.ptr<float>(), dh.ptr<float>(),
                          dxg.ptr<float>(), dhg.ptr<float>(), dh_prev.ptr<float>(), B, H, as_stream(stream));
        check_launch("gru_cell_backward");
      },
      py::arg("gates"), py::arg("hn"), py::arg("h_prev"), py::arg("dy"), py::arg("dh_next"), py::arg("dxg"),
      py::arg("dhg"), py::arg("dh_prev"), py::arg("stream"),
      "Backward of one GRU step from the saved gates (B, 3H), hn and h_prev (B, H); dy and\n"
      "dh_next (B, H) or None (zero). Writes dxg and dhg (B, 3H) and dh * z (B, H).");
}

}  // namespace gpunet
