// norm.h -- host API of csrc/kernels/norm.cu (algorithms there).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// x, y: (rows, cols) row-major; w, b: (cols); mean, rstd: (rows) float32
// outputs. x, w, b, y (and the backward's dy, dx, dw, db) of the storage type
// `storage` (float32, float16 or bfloat16), computed in float32, each output
// rounded once.
// y = (x - mean) * rstd * w + b with the biased variance, rstd = 1/sqrt(var + eps).
void layernorm_forward(Storage storage, const void* x, const void* w, const void* b, void* y, float* mean,
                       float* rstd, int64_t rows, int64_t cols, float eps, cudaStream_t stream);

// dx (rows, cols) from x, w, the saved mean/rstd and dy; dw, db (cols)
// overwritten. partial: (2, chunks, cols) workspace for the deterministic
// two-pass parameter-gradient reduction (rows split into `chunks` slices),
// float32 whatever the storage.
void layernorm_backward(Storage storage, const void* x, const void* w, const float* mean, const float* rstd,
                        const void* dy, void* dx, void* dw, void* db, float* partial, int64_t chunks, int64_t rows,
                        int64_t cols, cudaStream_t stream);

}  // namespace gpunet
