// softmax.h -- host API of csrc/kernels/softmax.cu (algorithms there).
//
// All arrays are C-contiguous float32 in device memory; a (rows, cols)
// matrix is reduced along its last axis. Launchers return at
// once; the caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

// y = softmax(beta * x) (log = false) or log_softmax(beta * x) (log = true), row by row.
void softmax_forward(const float* x, float* y, int64_t rows, int cols, float beta, bool log, cudaStream_t stream);

// dx from the forward output y and the output gradient dy:
//   softmax      dx = beta * y * (dy - sum(dy * y))
//   log_softmax  dx = beta * (dy - exp(y) * sum(dy))
void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int cols, float beta, bool log,
                      cudaStream_t stream);

}  // namespace gpunet
