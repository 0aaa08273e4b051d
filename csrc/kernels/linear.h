// linear.h -- host API of csrc/kernels/linear.cu (algorithms there).
//
// Launchers take device pointers and extents, launch on `stream` and return
// at once; the caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

// y viewed as (outer, channels, inner): y[o, c, i] += b[c], in place.
void bias_add(float* y, const float* b, int64_t outer, int64_t channels, int64_t inner, cudaStream_t stream);

// db[c] = sum over o, i of dy[o, c, i] (overwrites db); bitwise deterministic.
void bias_grad(const float* dy, float* db, int64_t outer, int64_t channels, int64_t inner, cudaStream_t stream);

}  // namespace gpunet
