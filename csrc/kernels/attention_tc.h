// attention_tc.h -- host API of csrc/kernels/attention_tc.cu: FlashAttention-2
// on tensor cores for float16 / bfloat16 storage, head dims multiples of 8 up
// to 128 (kernel instances 16, 32, 64, 128; smaller dims zero-padded).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// Head dims the tensor-core kernels take (q, k, v share it).
inline bool attention_tc_head_dim(int64_t d) { return d >= 8 && d <= 128 && d % 8 == 0; }

// out = softmax(q kᵀ·scale) v (causal: key j > query i removed); q (B, L, d),
// k, v (B, S, d), out (B, L, d) of storage s (F16 or BF16, as raw 16-bit
// values); lse (B, L) float32: the natural log-sum-exp of each row of scaled
// scores (-inf for a row without keys).
void attention_tc_forward(Storage s, const void* q, const void* k, const void* v, void* out, float* lse, int64_t B,
                          int64_t L, int64_t S, int d, bool causal, float scale, cudaStream_t stream);

// dq, dk, dv from the forward's q, k, v, out, lse and dout. Workspaces:
// delta (B, L) and dq_accum (B, L, d), float32 (O(L·d), never L·S).
void attention_tc_backward(Storage s, const void* q, const void* k, const void* v, const void* out,
                           const void* dout, const float* lse, void* dq, void* dk, void* dv, float* delta,
                           float* dq_accum, int64_t B, int64_t L, int64_t S, int d, bool causal, float scale,
                           cudaStream_t stream);

}  // namespace gpunet
