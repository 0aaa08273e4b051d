// conv_tensor_core.h -- host API of csrc/kernels/conv_tensor_core.cu: 2-D convolution of
// float16 / bfloat16 arrays as implicit GEMMs on tensor cores (algorithms there).
//
// Launchers take device pointers of the storage type `st` (F16 or BF16;
// bfloat16 as its bits), launch on `stream` and return at once; the caller
// checks the launch (check_launch in binding.h). Every array is C-contiguous
// NCHW: x (n, c, h, w), w (o, c/groups, kh, kw), y and dy (n, o, oh, ow).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"
#include "kernels/conv.h"

namespace gpunet {

// The geometry of one call: the input and window (ConvShape), the output
// channels and the group count (both dividing into the channels).
struct TcConvShape {
  ConvShape s;
  int64_t o;
  int64_t groups;
};

// A bound on every extent of the three GEMMs (rows, columns, reduction) of a
// shape: the largest element count of x, y and w. The kernels index GEMM rows
// and columns with int32 and need it below 2^31 (element offsets are int64).
int64_t conv_tc_max_extent(const TcConvShape& t);

// y = conv(x, w) (+ b[o] where b is not null), fp32 accumulation, rounded once.
void conv_tc_forward(Storage st, const void* x, const void* w, const void* b, void* y, const TcConvShape& t,
                     cudaStream_t stream);
// dx = the input gradient of the convolution for the output gradient dy.
void conv_tc_dgrad(Storage st, const void* dy, const void* w, void* dx, const TcConvShape& t, cudaStream_t stream);
// dw = the weight gradient for input x and output gradient dy.
void conv_tc_wgrad(Storage st, const void* x, const void* dy, void* dw, const TcConvShape& t, cudaStream_t stream);
// db[o] = the sum of dy[:, o] (fp32, fixed order, rounded once).
void conv_tc_bias_grad(Storage st, const void* dy, void* db, const TcConvShape& t, cudaStream_t stream);

}  // namespace gpunet
