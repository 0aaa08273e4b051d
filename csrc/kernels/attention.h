// attention.h -- host API of csrc/kernels/attention.cu (algorithms there).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// Largest head dimension (E and Ev) the kernels take.
constexpr int kAttnMaxHeadDim = 128;

// An optional additive mask read through broadcast strides (in elements):
// for batch index bh = outer·inner + h, query i and key j the bias is
// ptr[outer·stride_outer + h·stride_inner + i·stride_row + j]. A stride of 0
// broadcasts that axis (e.g. stride_row = 0 for a key padding mask).
// ptr == nullptr means no mask.
struct AttnBias {
  const float* ptr = nullptr;
  int64_t stride_outer = 0, stride_inner = 0, stride_row = 0;
  int64_t inner = 1;
};

// q (batch, L, E), k (batch, S, E), v (batch, S, Ev) -> out (batch, L, Ev) and
// lse (batch, L), the log-sum-exp of each query's scaled, masked scores
// (-inf for a query whose keys are all masked; its output row is 0).
// causal: query i sees keys j <= i.
void attention_forward(Storage storage, const void* q, const void* k, const void* v, const AttnBias& bias,
                       bool causal, float scale, void* out, float* lse, int64_t batch, int64_t L, int64_t S, int E,
                       int Ev, cudaStream_t stream);

// Gradients dq, dk, dv (shapes of q, k, v; overwritten) from the forward's
// inputs, out, lse and dout. delta (batch, L) is a workspace (rowsum(dout·out)).
void attention_backward(Storage storage, const void* q, const void* k, const void* v, const void* out,
                        const void* dout, const float* lse, const AttnBias& bias, bool causal, float scale, void* dq,
                        void* dk, void* dv, float* delta, int64_t batch, int64_t L, int64_t S, int E, int Ev,
                        cudaStream_t stream);

}  // namespace gpunet
