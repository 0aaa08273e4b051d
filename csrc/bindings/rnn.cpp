// rnn.cpp -- Python bindings of csrc/kernels/rnn.cu (LSTM, GRU and RNN cell steps).
// Optional arrays (biases, missing gradients) are passed as None and reach
// the kernels as null pointers.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/rnn.h"

namespace gpunet {
namespace {

// The call's first array: float32, float16 or bfloat16 (its bits as int16),
// C-contiguous; every other array of the call must have its storage type.
View first(py::handle obj, const char* name) {
  View v = view_of(obj, name);
  same_storage({{&v, name}});
  return v;
}

// A C-contiguous array of exactly `shape`, of the storage type of `like`.
View shaped(py::handle obj, const char* name, const std::vector<int64_t>& shape, const View& like) {
  View v = view_of(obj, name);
  same_storage({{&like, like.name.c_str()}, {&v, name}});
  require_shape(v, name, shape);
  return v;
}

View output(py::handle obj, const char* name, const std::vector<int64_t>& shape, const View& like) {
  View v = shaped(obj, name, shape, like);
  require_writable(v, name);
  return v;
}

// None, or an array as shaped() takes it. None gives an empty View: its data
// is nullptr (the kernels' "absent") and vouch() takes it.
View optional(py::handle obj, const char* name, const std::vector<int64_t>& shape, const View& like) {
  return obj.is_none() ? View{} : shaped(obj, name, shape, like);
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
        const View c_prev = first(cprev_o, "c_prev");
        const auto [B, H] = state_dims(c_prev, "c_prev");
        const View xg = shaped(xg_o, "xg", {B, 4 * H}, c_prev);
        const View hg = shaped(hg_o, "hg", {B, 4 * H}, c_prev);
        const View b_hh = optional(bhh_o, "b_hh", {4 * H}, c_prev);
        const View gates = output(gates_o, "gates", {B, 4 * H}, c_prev);
        const View h = output(h_o, "h", {B, H}, c_prev);
        const View c = output(c_o, "c", {B, H}, c_prev);
        auto guard = vouch({xg, hg, b_hh, c_prev, gates, h, c});
        lstm_cell_forward(storage_of(c_prev, "c_prev"), xg.data, hg.data, b_hh.data, c_prev.data,
                          gates.data, h.data, c.data, B, H, as_stream(stream));
        check_launch("lstm_cell_forward");
      },
      py::arg("xg"), py::arg("hg"), py::arg("b_hh"), py::arg("c_prev"), py::arg("gates"), py::arg("h"), py::arg("c"),
      py::arg("stream"),
      "One LSTM step. xg = x W_ih^T + b_ih and hg = h_prev W_hh^T, (B, 4H), gate\n"
      "blocks i, f, g, o; b_hh (4H,) or None; c_prev (B, H). Writes the activated gates\n"
      "(B, 4H; may be xg itself), h and c (B, H).");
  m.def(
      "lstm_cell_backward",
      [](py::handle gates_o, py::handle cprev_o, py::handle c_o, py::handle dy_o, py::handle dh_o, py::handle dc_o,
         py::handle dgates_o, py::handle dcprev_o, std::uintptr_t stream) {
        const View c_prev = first(cprev_o, "c_prev");
        const auto [B, H] = state_dims(c_prev, "c_prev");
        const View gates = shaped(gates_o, "gates", {B, 4 * H}, c_prev);
        const View c = shaped(c_o, "c", {B, H}, c_prev);
        const View dy = optional(dy_o, "dy", {B, H}, c_prev);
        const View dh = optional(dh_o, "dh_next", {B, H}, c_prev);
        const View dc = optional(dc_o, "dc_next", {B, H}, c_prev);
        const View dgates = output(dgates_o, "dgates", {B, 4 * H}, c_prev);
        const View dc_prev = output(dcprev_o, "dc_prev", {B, H}, c_prev);
        auto guard = vouch({gates, c_prev, c, dy, dh, dc, dgates, dc_prev});
        lstm_cell_backward(storage_of(c_prev, "c_prev"), gates.data, c_prev.data, c.data, dy.data, dh.data,
                           dc.data, dgates.data, dc_prev.data, B, H, as_stream(stream));
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
        const View xg = first(xg_o, "xg");
        const auto [B, H] = state_dims(xg, "xg");
        const View hg = shaped(hg_o, "hg", {B, H}, xg);
        const View b_hh = optional(bhh_o, "b_hh", {H}, xg);
        const View h = output(h_o, "h", {B, H}, xg);
        auto guard = vouch({xg, hg, b_hh, h});
        rnn_cell_forward(storage_of(xg, "xg"), xg.data, hg.data, b_hh.data, h.data, B, H, relu,
                         as_stream(stream));
        check_launch("rnn_cell_forward");
      },
      py::arg("xg"), py::arg("hg"), py::arg("b_hh"), py::arg("h"), py::arg("relu"), py::arg("stream"),
      "One Elman RNN step h = act(xg + hg + b_hh), act relu (relu=True) or tanh; xg, hg, h\n"
      "(B, H) (h may be xg itself), b_hh (H,) or None.");
  m.def(
      "rnn_cell_backward",
      [](py::handle h_o, py::handle dy_o, py::handle dh_o, py::handle dpre_o, bool relu, std::uintptr_t stream) {
        const View h = first(h_o, "h");
        const auto [B, H] = state_dims(h, "h");
        const View dy = optional(dy_o, "dy", {B, H}, h);
        const View dh = optional(dh_o, "dh_next", {B, H}, h);
        const View dpre = output(dpre_o, "dpre", {B, H}, h);
        auto guard = vouch({h, dy, dh, dpre});
        rnn_cell_backward(storage_of(h, "h"), h.data, dy.data, dh.data, dpre.data, B, H, relu,
                          as_stream(stream));
        check_launch("rnn_cell_backward");
      },
      py::arg("h"), py::arg("dy"), py::arg("dh_next"), py::arg("dpre"), py::arg("relu"), py::arg("stream"),
      "dpre = (dy + dh_next) * act'(h) for one RNN step from its output h (B, H);\n"
      "dy and dh_next (B, H) or None.");
  m.def(
      "gru_cell_forward",
      [](py::handle xg_o, py::handle hg_o, py::handle bhh_o, py::handle hprev_o, py::handle gates_o, py::handle hn_o,
         py::handle h_o, std::uintptr_t stream) {
        const View h_prev = first(hprev_o, "h_prev");
        const auto [B, H] = state_dims(h_prev, "h_prev");
        const View xg = shaped(xg_o, "xg", {B, 3 * H}, h_prev);
        const View hg = shaped(hg_o, "hg", {B, 3 * H}, h_prev);
        const View b_hh = optional(bhh_o, "b_hh", {3 * H}, h_prev);
        const View gates = output(gates_o, "gates", {B, 3 * H}, h_prev);
        const View hn = output(hn_o, "hn", {B, H}, h_prev);
        const View h = output(h_o, "h", {B, H}, h_prev);
        auto guard = vouch({xg, hg, b_hh, h_prev, gates, hn, h});
        gru_cell_forward(storage_of(h_prev, "h_prev"), xg.data, hg.data, b_hh.data, h_prev.data, gates.data,
                         hn.data, h.data, B, H, as_stream(stream));
        check_launch("gru_cell_forward");
      },
      py::arg("xg"), py::arg("hg"), py::arg("b_hh"), py::arg("h_prev"), py::arg("gates"), py::arg("hn"), py::arg("h"),
      py::arg("stream"),
      "One GRU step. xg = x W_ih^T + b_ih and hg = h_prev W_hh^T, (B, 3H), gate\n"
      "blocks r, z, n; b_hh (3H,) or None; h_prev (B, H). Writes the activated gates\n"
      "(B, 3H; may be xg itself), hn = hg_n + b_hn and h (B, H).");
  m.def(
      "gru_cell_backward",
      [](py::handle gates_o, py::handle hn_o, py::handle hprev_o, py::handle dy_o, py::handle dh_o, py::handle dxg_o,
         py::handle dhg_o, py::handle dhprev_o, std::uintptr_t stream) {
        const View h_prev = first(hprev_o, "h_prev");
        const auto [B, H] = state_dims(h_prev, "h_prev");
        const View gates = shaped(gates_o, "gates", {B, 3 * H}, h_prev);
        const View hn = shaped(hn_o, "hn", {B, H}, h_prev);
        const View dy = optional(dy_o, "dy", {B, H}, h_prev);
        const View dh = optional(dh_o, "dh_next", {B, H}, h_prev);
        const View dxg = output(dxg_o, "dxg", {B, 3 * H}, h_prev);
        const View dhg = output(dhg_o, "dhg", {B, 3 * H}, h_prev);
        const View dh_prev = output(dhprev_o, "dh_prev", {B, H}, h_prev);
        auto guard = vouch({gates, hn, h_prev, dy, dh, dxg, dhg, dh_prev});
        gru_cell_backward(storage_of(h_prev, "h_prev"), gates.data, hn.data, h_prev.data, dy.data, dh.data,
                          dxg.data, dhg.data, dh_prev.data, B, H, as_stream(stream));
        check_launch("gru_cell_backward");
      },
      py::arg("gates"), py::arg("hn"), py::arg("h_prev"), py::arg("dy"), py::arg("dh_next"), py::arg("dxg"),
      py::arg("dhg"), py::arg("dh_prev"), py::arg("stream"),
      "Backward of one GRU step from the saved gates (B, 3H), hn and h_prev (B, H); dy and\n"
      "dh_next (B, H) or None (zero). Writes dxg and dhg (B, 3H) and dh * z (B, H).");
}

}  // namespace gpunet
