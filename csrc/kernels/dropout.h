// dropout.h -- host API of csrc/kernels/dropout.cu (algorithm there).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// y[k] = x[k] * scale if bits(seed, offset + k) >= threshold, else 0, over n
// elements of `storage` (float32, float16 or bfloat16, computed in float32;
// y may alias x), with bits the high half of SplitMix64's
// output number offset + k of the stream `seed` (gpunet/ops/dropout.py has
// the same generator in NumPy). Forward on x and backward on dy alike.
void dropout_apply(Storage storage, const void* x, void* y, int64_t n, uint64_t seed, uint64_t offset,
                   uint64_t threshold, float scale, cudaStream_t stream);

}  // namespace gpunet
