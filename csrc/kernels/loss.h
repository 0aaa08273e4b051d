// loss.h -- host API of csrc/kernels/loss.cu (algorithms there).
//
// All arrays are C-contiguous float32 (targets int64) in device memory, but
// the logits and dlogits, of the storage type `storage` (float32, float16 or
// bfloat16; computed in float32, dlogits rounded once to it); the
// (rows, cols) logits are reduced along their last axis. Launchers return at
// once; the caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// Per-row cross-entropy of softmax(logits) against class indices, with
// optional class weights (nullptr: all 1) and label smoothing eps:
//   loss[r] = sum_c a_c (lse[r] - logits[r, c]),  a_c = (1 - eps) w_t [c == t] + eps / cols * w_c
// 0 where target == ignore_index; a target out of range counts 0 and is
// reported in `flag` (common/error_flag.cuh: 4 int64, zero when nothing is wrong).
// Also writes the row's log-sum-exp for the backward as the pair
// lse[r, 0] = m = max_c logits[r, c], lse[r, 1] = log sum_c exp(logits[r, c] - m)
// (lse = m + l, split so that large logits keep float32 precision).
void cross_entropy_forward(Storage storage, const void* logits, const int64_t* target, const float* weight,
                           float* loss, float* lse, int64_t rows, int cols, int64_t ignore_index, float eps,
                           int64_t* flag, cudaStream_t stream);

// dlogits[r, c] = dloss[r] * ((sum_k a_k) * exp((logits[r, c] - m) - l) - a_c), the
// probabilities recomputed from the logits and the forward's (m, l) pairs. weight_sum points to
// sum_c weight[c] (one float; unused when weight is nullptr). Rows whose target
// is ignore_index or out of range get 0.
void cross_entropy_backward(Storage storage, const void* logits, const int64_t* target, const float* weight,
                            const float* weight_sum, const float* lse, const float* dloss, void* dlogits,
                            int64_t rows, int cols, int64_t ignore_index, float eps, cudaStream_t stream);

}  // namespace gpunet
