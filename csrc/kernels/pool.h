// pool.h -- host API of csrc/kernels/pool.cu (algorithms there).
//
// Launchers take device pointers, launch on `stream` and return at once; the
// caller checks the launch (check_launch in binding.h). x, y, dy and dx are of
// the storage type `storage` (float32, float16 or bfloat16), computed in
// float32 and rounded once; arg is int32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// Pooling over `planes` = N*C independent (h, w) planes into (oh, ow):
// window kh x kw, stride, padding and dilation (1 for average pooling).
struct PoolShape {
  int64_t planes, h, w, oh, ow;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// y = max over each window (padding counts as -inf; NaN propagates as in
// PyTorch); arg = index y*w + x of the chosen element in its input plane,
// the first maximum in row-major window order.
void maxpool2d_forward(Storage storage, const void* x, void* y, int32_t* arg, const PoolShape& s,
                       cudaStream_t stream);

// dx[p, y, x] = sum of dy over the windows of plane p whose arg is y*w + x
// (overwrites dx).
void maxpool2d_backward(Storage storage, const void* dy, const int32_t* arg, void* dx, const PoolShape& s,
                        cudaStream_t stream);

// y = window sum / divisor; divisor = window clipped to the padded input
// (count_include_pad) or to the input.
void avgpool2d_forward(Storage storage, const void* x, void* y, const PoolShape& s, bool count_include_pad,
                       cudaStream_t stream);

// dx = sum over the windows containing the element of dy / divisor (overwrites dx).
void avgpool2d_backward(Storage storage, const void* dy, void* dx, const PoolShape& s, bool count_include_pad,
                        cudaStream_t stream);

// Test hook for the index paths past 2^31 (tests/test_launch.py): the width
// the kernels index with for s, 32 or 64.
int pool_index_bits(const PoolShape& s);

}  // namespace gpunet
