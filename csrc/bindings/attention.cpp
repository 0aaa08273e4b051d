// attention.cpp -- Python bindings of csrc/kernels/attention.cu.
#include <climits>
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/attention.h"

namespace gpunet {
namespace {

struct AttentionDims {
  int64_t batch, L, S;
  int E, Ev;
};

// q (B, L, E), k (B, S, E), v (B, S, Ev); E, Ev in 1..128.
AttentionDims check_qkv(const View& q, const View& k, const View& v) {
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
AttnBias check_bias(py::handle bias_obj, int64_t so, int64_t si, int64_t sr, int64_t inner, const AttentionDims& d, View& view) {
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
struct AttentionInputs {
  View q, k, v;
  View bias_view;  // empty without a mask
  AttentionDims d;
  AttnBias bias;
  Storage storage;  // q's, k's and v's (and their outputs' and gradients')
};
AttentionInputs attention_inputs(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle bias_obj, int64_t so,
                        int64_t si, int64_t sr, int64_t inner) {
  const View q = view_of(q_obj, "q"), k = view_of(k_obj, "k"), v = view_of(v_obj, "v");
  const Storage storage = same_storage({{&q, "q"}, {&k, "k"}, {&v, "v"}});
  AttentionInputs in{q, k, v, View{}, check_qkv(q, k, v), AttnBias{}, storage};
  in.bias = check_bias(bias_obj, so, si, sr, inner, in.d, in.bias_view);
  return in;
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def(
      "attention_forward",
      [](py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle bias_obj, int64_t so, int64_t si,
         int64_t sr, int64_t inner, bool causal, float scale, py::handle out_obj, py::handle lse_obj,
         std::uintptr_t stream) {
        const AttentionInputs in = attention_inputs(q_obj, k_obj, v_obj, bias_obj, so, si, sr, inner);
        const AttentionDims& d = in.d;
        const View out = view_of(out_obj, "out");
        same_storage({{&in.q, "q"}, {&out, "out"}});
        require_writable(out, "out");
        const auto [lse] = float32_outputs({{lse_obj, "lse"}});
        require_shape(out, "out", {d.batch, d.L, d.Ev});
        require_shape(lse, "lse", {d.batch, d.L});
        require_outputs_apart({out, lse}, {in.q, in.k, in.v, in.bias_view});
        auto guard = vouch({in.q, in.k, in.v, in.bias_view, out, lse});
        attention_forward(in.storage, in.q.data, in.k.data, in.v.data, in.bias, causal, scale, out.data,
                          lse.ptr<float>(), d.batch, d.L, d.S, d.E, d.Ev, as_stream(stream));
        check_launch("attention_forward");
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("bias_stride_outer"),
      py::arg("bias_stride_inner"), py::arg("bias_stride_row"), py::arg("inner"), py::arg("causal"),
      py::arg("scale"), py::arg("out"), py::arg("lse"), py::arg("stream"),
      "Flash attention forward: out = softmax(q k^T * scale + bias) v; q, k, v, out float32,\n"
      "float16 or bfloat16 (its bits as int16), one dtype, C-contiguous, computed in float32;\n"
      "lse and bias float32.\n"
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
        const AttentionInputs in = attention_inputs(q_obj, k_obj, v_obj, bias_obj, so, si, sr, inner);
        const AttentionDims& d = in.d;
        const View out = view_of(out_obj, "out"), dout = view_of(dout_obj, "dout");
        const View dq = view_of(dq_obj, "dq"), dk = view_of(dk_obj, "dk"), dv = view_of(dv_obj, "dv");
        same_storage({{&in.q, "q"}, {&out, "out"}, {&dout, "dout"}, {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}});
        for (const auto& [w, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}}) require_writable(*w, name);
        const auto [lse] = float32_arrays({{lse_obj, "lse"}});
        const auto [delta] = float32_outputs({{delta_obj, "delta"}});
        require_shape(out, "out", {d.batch, d.L, d.Ev});
        require_same_shape(out, "out", dout, "dout");
        require_shape(lse, "lse", {d.batch, d.L});
        require_same_shape(in.q, "q", dq, "dq");
        require_same_shape(in.k, "k", dk, "dk");
        require_same_shape(in.v, "v", dv, "dv");
        require_shape(delta, "delta", {d.batch, d.L});
        require_outputs_apart({dq, dk, dv, delta}, {in.q, in.k, in.v, in.bias_view, out, dout, lse});
        auto guard = vouch({in.q, in.k, in.v, in.bias_view, out, dout, lse, dq, dk, dv, delta});
        attention_backward(in.storage, in.q.data, in.k.data, in.v.data, out.data, dout.data, lse.ptr<float>(),
                           in.bias, causal, scale, dq.data, dk.data, dv.data, delta.ptr<float>(), d.batch, d.L,
                           d.S, d.E, d.Ev, as_stream(stream));
        check_launch("attention_backward");
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("bias"),
      py::arg("bias_stride_outer"), py::arg("bias_stride_inner"), py::arg("bias_stride_row"), py::arg("inner"),
      py::arg("causal"), py::arg("scale"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("delta"),
      py::arg("stream"),
      "Flash attention backward: writes dq, dk, dv (shapes of q, k, v) from the forward's q, k, v,\n"
      "out, lse, the same bias/causal/scale, and dout (dtypes as in attention_forward). delta\n"
      "(B, L) is a float32 workspace.\n"
      "Scores are recomputed tile by tile; no atomics, so the result is bitwise reproducible.");
}

}  // namespace gpunet
