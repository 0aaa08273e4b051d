// softmax.h -- host API of csrc/kernels/softmax.cu (algorithms there).
//
// All arrays are C-contiguous, of one storage type (float32, float16 or
// bfloat16: common/storage.h; computed in float32) in device memory; a (rows, cols)
// matrix is reduced along its last axis. Launchers return at
// once; the caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// y = softmax(beta * x) (log = false) or log_softmax(beta * x) (log = true), row by row.
void softmax_forward(Storage storage, const void* x, void* y, int64_t rows, int cols, float beta, bool log,
                     cudaStream_t stream);

// dx from the forward output y and the output gradient dy:
//   softmax      dx = beta * y * (dy - sum(dy * y))
//   log_softmax  dx = beta * (dy - exp(y) * sum(dy))
void softmax_backward(Storage storage, const void* y, const void* dy, void* dx, int64_t rows, int cols, float beta,
                      bool log, cudaStream_t stream);

}  // namespace gpunet
