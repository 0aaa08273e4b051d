// embedding.h -- host API of csrc/kernels/embedding.cu (algorithms there).
// Arrays are C-contiguous in device memory: weights and gradients of the
// storage type `storage` (float32, float16 or bfloat16; sums in float32),
// indices int64.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// out[n, :] = weight[idx[n], :] for n < count; weight (vocab, dim). A row
// index outside [0, vocab) gives a row of zeros and is reported in `flag`
// (common/error_flag.cuh: 4 int64, zero when nothing is wrong).
void embedding_forward(Storage storage, const void* weight, const int64_t* idx, void* out, int64_t count,
                       int64_t vocab, int64_t dim, int64_t* flag, cudaStream_t stream);

// dweight[v, :] = sum of dy[order[p], :] for p in [row_ptr[v], row_ptr[v+1]),
// in increasing p (overwrites dweight, zero for unused rows and for row
// padding_idx; padding_idx = -1 for none). order (count) lists the positions
// sorted by their index, row_ptr (vocab + 1) is the CSR row pointer of that
// sorted list. Deterministic: no atomics.
void embedding_backward(Storage storage, const void* dy, const int64_t* order, const int64_t* row_ptr, void* dweight,
                        int64_t count, int64_t vocab, int64_t dim, int64_t padding_idx, cudaStream_t stream);

}  // namespace gpunet
