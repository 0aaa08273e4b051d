// attention.cpp -- Python bindings of csrc/kernels/attention.cu.
#include <climits>
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/attention.h"
#include "kernels/attention_tc.h"

namespace gpunet {
namespace {

struct Dims {
  int64_t batch, L, S;
  int E, Ev;
};

// q (B, L, E), k (B, S, E), v (B, S, Ev); E, Ev in 1..128.
Dims check_qkv(const View& q, const View& k, const View& v) {
  require_ndim(q, "q", 3);
  require_ndim(k, "k", 3);
  require_ndim(v, "v", 3);
  const int64_t B = q.shape[0], L = q.shape[1], E = q.shape[2], S = k.shape[1], Ev = v.shape[2];
  require_shape(k, "k", {B, S, E});
  require_shape(v, "v", {B, S, Ev});
  if (E < 1 || E > kAttnMaxHeadDim || Ev < 1 || Ev > kAttnMaxHeadDim)
    throw py::value_error("arguments 'q', 'v': head dims must be in 1.." + std::to_string(kAttnMaxHeadDim) +
                          ", got E=" + std::to_string(E) + ", Ev=" + std::to_string(Ev));
  const int64_t blocks = (L > S ? L : S) / 32 + 1;  // >= ceil(max(L, S) / 32)
  if (checked_mul(B, blocks, "argument 'q': the grid size") > INT_MAX)
    throw py::value_error("argument 'q': batch * ceil(max(L, S) / 32) exceeds the grid limit, got shape " +
                          detail::shape_str(q.shape));
  return {B, L, S, (int)E, (int)Ev};
}

// The optional additive mask: None (then `view` stays empty), or a float32
// contiguous array indexed through the strides; every index the kernels can
// form must be inside it.
AttnBias check_bias(py::handle bias_obj, int64_t so, int64_t si, int64_t sr, int64_t inner, const Dims& d, View& view) {
  if (inner < 1 || d.batch % inner != 0)
    throw py::value_error("argument 'inner': expected a divisor of the batch size " + std::to_string(d.batch) +
                          ", got " + std::to_string(inner));
  AttnBias b;
  b.inner = inner;
  if (bias_obj.is_none()) return b;
  view = as_array(bias_obj, "bias", "float32");
  if (so < 0 || si < 0 || sr < 0)
    throw py::value_error("bias strides must be >= 0, got outer=" + std::to_string(so) + ", inner=" +
                          std::to_string(si) + ", row=" + std::to_string(sr));
  if (d.batch == 0 || d.L == 0 || d.S == 0) return b;  // no score is formed, the mask is never read
  // the largest index the kernels form, without wrapping around int64
  const std::string what = "argument 'bias': the index reached by the strides";
  int64_t last = checked_mul(d.batch / inner - 1, so, what);
  last = checked_add(last, checked_mul(inner - 1, si, what), what);
  last = checked_add(last, checked_mul(d.L - 1, sr, what), what);
  last = checked_add(last, d.S - 1, what);
  if (last >= view.numel())
    throw py::value_error("argument 'bias': the strides reach element " + std::to_string(last) + " but it has " +
                          std::to_string(view.numel()) + " (shape " + detail::shape_str(view.shape) + ")");
  b.ptr = view.ptr<float>();
  b.stride_outer = so;
  b.stride_inner = si;
  b.stride_row = sr;
  return b;
}

// What forward and backward both read: q, k, v and the optional mask.
struct Inputs {
  View q, k, v;
  View bias_view;  // empty without a mask
  Dims d;
  AttnBias bias;
};
Inputs attention_inputs(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle bias_obj, int64_t so,
                        int64_t si, int64_t sr, int64_t inner) {
  const auto [q, k, v] = float32_arrays({{q_obj, "q"}, {k_obj, "k"}, {v_obj, "v"}});
  Inputs in{q, k, v, View{}, check_qkv(q, k, v), AttnBias{}};
  in.bias = check_bias(bias_obj, so, si, sr, inner, in.d, in.bias_view);
  return in;
}

// ---------------------------------------------------------------- tensor cores (attention_tc.cu)
// q (B, L, D), k, v (B, S, D) of one 16-bit storage type, D = 64 or 128.
struct TcInputs {
  View q, k, v;
  Storage s;
  int64_t B, L, S;
  int D;
};
TcInputs tc_inputs(py::handle q_obj, py::handle k_obj, py::handle v_obj) {
  TcInputs in{view_of(q_obj, "q"), view_of(k_obj, "k"), view_of(v_obj, "v"), Storage::F32, 0, 0, 0, 0};
  in.s = same_storage({{&in.q, "q"}, {&in.k, "k"}, {&in.v, "v"}});
  if (in.s == Storage::F32)
    throw py::type_error("argument 'q': expected dtype float16 or bfloat16 (int16 bits) but got float32");
  require_ndim(in.q, "q", 3);
  in.B = in.q.shape[0], in.L = in.q.shape[1], in.S = in.k.shape[1];
  const int64_t D = in.q.shape[2];
  if (!attention_tc_head_dim(D)) throw py::value_error("argument 'q': head dim must be 64 or 128, got " + std::to_string(D));
  in.D = (int)D;
  require_shape(in.k, "k", {in.B, in.S, D});
  require_shape(in.v, "v", {in.B, in.S, D});
  if (in.L < 1 || in.S < 1) throw py::value_error("arguments 'q', 'k': empty sequences are not supported");
  return in;
}

void bind_attention_tc(py::module_& m) {
  m.def(
      "attention_tc_forward",
      [](py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal, float scale, py::handle out_obj,
         py::handle lse_obj, std::uintptr_t stream) {
        const TcInputs in = tc_inputs(q_obj, k_obj, v_obj);
        const View out = view_of(out_obj, "out");
        same_storage({{&in.q, "q"}, {&out, "out"}});
        const View lse = as_array(lse_obj, "lse", "float32");
        require_shape(out, "out", {in.B, in.L, in.D});
        require_shape(lse, "lse", {in.B, in.L});
        require_writable(out, "out");
        require_writable(lse, "lse");
        require_outputs_apart({out, lse}, {in.q, in.k, in.v});
        auto guard = vouch({in.q, in.k, in.v, out, lse});
        attention_tc_forward(in.s, in.q.ptr<void>(), in.k.ptr<void>(), in.v.ptr<void>(), out.ptr<void>(),
                             lse.ptr<float>(), in.B, in.L, in.S, in.D, causal, scale, as_stream(stream));
        check_launch("attention_tc_forward");
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("scale"), py::arg("out"), py::arg("lse"),
      py::arg("stream"),
      "FlashAttention-2 forward on tensor cores: out = softmax(q k^T * scale) v. q (B, L, D), k, v\n"
      "(B, S, D), out (B, L, D): float16, or bfloat16 as int16 bits, C-contiguous; D = 64 or 128.\n"
      "lse (B, L) float32: each query's log-sum-exp. causal: query i sees keys j <= i.");
  m.def(
      "attention_tc_backward",
      [](py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle out_obj, py::handle dout_obj,
         py::handle lse_obj, bool causal, float scale, py::handle dq_obj, py::handle dk_obj, py::handle dv_obj,
         py::handle delta_obj, py::handle dq_accum_obj, std::uintptr_t stream) {
        const TcInputs in = tc_inputs(q_obj, k_obj, v_obj);
        const View out = view_of(out_obj, "out"), dout = view_of(dout_obj, "dout");
        const View dq = view_of(dq_obj, "dq"), dk = view_of(dk_obj, "dk"), dv = view_of(dv_obj, "dv");
        same_storage({{&in.q, "q"}, {&out, "out"}, {&dout, "dout"}, {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}});
        const View lse = as_array(lse_obj, "lse", "float32");
        const View delta = as_array(delta_obj, "delta", "float32");
        const View dq_accum = as_array(dq_accum_obj, "dq_accum", "float32");
        require_same_shape(in.q, "q", out, "out");
        require_same_shape(in.q, "q", dout, "dout");
        require_same_shape(in.q, "q", dq, "dq");
        require_same_shape(in.k, "k", dk, "dk");
        require_same_shape(in.v, "v", dv, "dv");
        require_shape(lse, "lse", {in.B, in.L});
        require_shape(delta, "delta", {in.B, in.L});
        require_same_shape(in.q, "q", dq_accum, "dq_accum");
        for (const auto& [w, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&delta, "delta"},
                                      {&dq_accum, "dq_accum"}})
          require_writable(*w, name);
        require_outputs_apart({dq, dk, dv, delta, dq_accum}, {in.q, in.k, in.v, out, dout, lse});
        auto guard = vouch({in.q, in.k, in.v, out, dout, lse, dq, dk, dv, delta, dq_accum});
        attention_tc_backward(in.s, in.q.ptr<void>(), in.k.ptr<void>(), in.v.ptr<void>(), out.ptr<void>(),
                              dout.ptr<void>(), lse.ptr<float>(), dq.ptr<void>(), dk.ptr<void>(), dv.ptr<void>(),
                              delta.ptr<float>(), dq_accum.ptr<float>(), in.B, in.L, in.S, in.D, causal, scale,
                              as_stream(stream));
        check_launch("attention_tc_backward");
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("causal"),
      py::arg("scale"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("delta"), py::arg("dq_accum"),
      py::arg("stream"),
      "FlashAttention-2 backward on tensor cores: dq, dk, dv (shapes and dtype of q, k, v) from the\n"
      "forward's q, k, v, out, lse and dout. Workspaces, float32: delta (B, L) and dq_accum (B, L, D)\n"
      "(dq accumulates there with atomics: O(L*D) memory, no L x S matrix).");
}

}  // namespace

void bind_attention(py::module_& m) {
  bind_attention_tc(m);
  m.def(
      "attention_forward",
      [](py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle bias_obj, int64_t so, int64_t si,
         int64_t sr, int64_t inner, bool causal, float scale, py::handle out_obj, py::handle lse_obj,
         std::uintptr_t stream) {
        const Inputs in = attention_inputs(q_obj, k_obj, v_obj, bias_obj, so, si, sr, inner);
        const Dims& d = in.d;
        const auto [out, lse] = float32_outputs({{out_obj, "out"}, {lse_obj, "lse"}});
        require_shape(out, "out", {d.batch, d.L, d.Ev});
        require_shape(lse, "lse", {d.batch, d.L});
        require_outputs_apart({out, lse}, {in.q, in.k, in.v, in.bias_view});
        auto guard = vouch({in.q, in.k, in.v, in.bias_view, out, lse});
        attention_forward(in.q.ptr<float>(), in.k.ptr<float>(), in.v.ptr<float>(), in.bias, causal, scale,
                          out.ptr<float>(), lse.ptr<float>(), d.batch, d.L, d.S, d.E, d.Ev, as_stream(stream));
        check_launch("attention_forward");
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("bias_stride_outer"),
      py::arg("bias_stride_inner"), py::arg("bias_stride_row"), py::arg("inner"), py::arg("causal"),
      py::arg("scale"), py::arg("out"), py::arg("lse"), py::arg("stream"),
      "Flash attention forward: out = softmax(q k^T * scale + bias) v, float32, C-contiguous.\n"
      "q (B, L, E), k (B, S, E), v (B, S, Ev), E and Ev <= 128; out (B, L, Ev) and lse (B, L)\n"
      "(log-sum-exp of each query's scores) are written. bias: None or an additive float32 mask\n"
      "read as bias[(b // inner)*stride_outer + (b % inner)*stride_inner + i*stride_row + j]\n"
      "(strides in elements, 0 to broadcast). causal: query i sees keys j <= i.");
  m.def(
      "attention_backward",
      [](py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle out_obj, py::handle dout_obj,
         py::handle lse_obj, py::handle bias_obj, int64_t so, int64_t si, int64_t sr, int64_t inner, bool causal,
         float scale, py::handle dq_obj, py::handle dk_obj, py::handle dv_obj, py::handle delta_obj,
         std::uintptr_t stream) {
        const Inputs in = attention_inputs(q_obj, k_obj, v_obj, bias_obj, so, si, sr, inner);
        const Dims& d = in.d;
        const auto [out, dout, lse] = float32_arrays({{out_obj, "out"}, {dout_obj, "dout"}, {lse_obj, "lse"}});
        const auto [dq, dk, dv, delta] =
            float32_outputs({{dq_obj, "dq"}, {dk_obj, "dk"}, {dv_obj, "dv"}, {delta_obj, "delta"}});
        require_shape(out, "out", {d.batch, d.L, d.Ev});
        require_same_shape(out, "out", dout, "dout");
        require_shape(lse, "lse", {d.batch, d.L});
        require_same_shape(in.q, "q", dq, "dq");
        require_same_shape(in.k, "k", dk, "dk");
        require_same_shape(in.v, "v", dv, "dv");
        require_shape(delta, "delta", {d.batch, d.L});
        require_outputs_apart({dq, dk, dv, delta}, {in.q, in.k, in.v, in.bias_view, out, dout, lse});
        auto guard = vouch({in.q, in.k, in.v, in.bias_view, out, dout, lse, dq, dk, dv, delta});
        attention_backward(in.q.ptr<float>(), in.k.ptr<float>(), in.v.ptr<float>(), out.ptr<float>(),
                           dout.ptr<float>(), lse.ptr<float>(), in.bias, causal, scale, dq.ptr<float>(),
                           dk.ptr<float>(), dv.ptr<float>(), delta.ptr<float>(), d.batch, d.L, d.S, d.E, d.Ev,
                           as_stream(stream));
        check_launch("attention_backward");
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("bias"),
      py::arg("bias_stride_outer"), py::arg("bias_stride_inner"), py::arg("bias_stride_row"), py::arg("inner"),
      py::arg("causal"), py::arg("scale"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("delta"),
      py::arg("stream"),
      "Flash attention backward: writes dq, dk, dv (shapes of q, k, v) from the forward's q, k, v,\n"
      "out, lse, the same bias/causal/scale, and dout. delta (B, L) is a float32 workspace.\n"
      "Scores are recomputed tile by tile; no atomics, so the result is bitwise reproducible.");
}

}  // namespace gpunet
