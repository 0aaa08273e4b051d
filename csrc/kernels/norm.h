// norm.h -- host API of csrc/kernels/norm.cu (algorithms there).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

// x, y: (rows, cols) row-major; w, b: (cols); mean, rstd: (rows) outputs.
// y = (x - mean) * rstd * w + b with the biased variance, rstd = 1/sqrt(var + eps).
void layernorm_forward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                       int64_t rows, int64_t cols, float eps, cudaStream_t stream);

// dx (rows, cols) from x, w, the saved mean/rstd and dy; dw, db (cols)
// overwritten. partial: (2, chunks, cols) workspace for the deterministic
// two-pass parameter-gradient reduction (rows split into `chunks` slices).
void layernorm_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                        float* dx, float* dw, float* db, float* partial, int64_t chunks, int64_t rows,
                        int64_t cols, cudaStream_t stream);

}  // namespace gpunet
