// linear.h -- host API of csrc/kernels/linear.cu (algorithms there).
//
// Launchers take device pointers and extents, launch on `stream` and return
// at once; the caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// y viewed as (outer, channels, inner): y[o, c, i] += b[c], in place; y and b
// of the storage type, the sum in float32 rounded once.
void bias_add(Storage storage, void* y, const void* b, int64_t outer, int64_t channels, int64_t inner, cudaStream_t stream);

// db[c] = sum over o, i of dy[o, c, i] (overwrites db), accumulated in float32
// and rounded once to the storage type; bitwise deterministic.
void bias_grad(Storage storage, const void* dy, void* db, int64_t outer, int64_t channels, int64_t inner, cudaStream_t stream);

}  // namespace gpunet
