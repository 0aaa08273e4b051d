// attention_tc.cpp -- Python bindings of csrc/kernels/attention_tc.cu
// (FlashAttention-2 on tensor cores, float16/bfloat16, head dims multiples of 8 up to 128).
#include <cstdint>
#include <string>
#include <utility>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/attention_tc.h"

namespace gpunet {
namespace {

// The kernels copy rows 16 bytes at a time (cp.async): data pointers must be
// 16-byte aligned (rows are, D being a multiple of 8).
void require_aligned16(const View& v, const char* name) {
  if (reinterpret_cast<std::uintptr_t>(v.data) % 16 != 0)
    throw py::value_error(std::string("argument '") + name + "': the tensor-core kernels need a 16-byte aligned "
                          "array (copy it: its data pointer is offset)");
}

// q (B, L, D), k, v (B, S, D) of one 16-bit storage type, D a multiple of 8 up to 128.
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
  if (!attention_tc_head_dim(D))
    throw py::value_error("argument 'q': head dim must be a multiple of 8 from 8 to 128, got " + std::to_string(D));
  in.D = (int)D;
  require_shape(in.k, "k", {in.B, in.S, D});
  require_shape(in.v, "v", {in.B, in.S, D});
  if (in.L < 1 || in.S < 1) throw py::value_error("arguments 'q', 'k': empty sequences are not supported");
  require_aligned16(in.q, "q");
  require_aligned16(in.k, "k");
  require_aligned16(in.v, "v");
  return in;
}

}  // namespace

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
      "(B, S, D), out (B, L, D): float16, or bfloat16 as int16 bits, C-contiguous; D a multiple of 8 up to 128.\n"
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
        require_aligned16(dout, "dout");
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


}  // namespace gpunet
