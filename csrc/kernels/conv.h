// conv.h -- host API of csrc/kernels/conv.cu (algorithms there).
//
// Launchers take device pointers, launch on `stream` and return at once; the
// caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// One convolution over a chunk of `n` images: input (n, c, h, w), kernel
// kh x kw with stride, zero padding and dilation, output oh x ow.
struct ConvShape {
  int64_t n, c, h, w;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t oh, ow;
};

// cols (c*kh*kw, n*oh*ow) from x (n, c, h, w): row (ci, i, j), column
// (ni, y, x) holds x[ni, ci, y*sh - ph + i*dh, x*sw - pw + j*dw], 0 outside.
void im2col(Storage storage, const void* x, void* cols, const ConvShape& s, cudaStream_t stream);

// dx (n, c, h, w) = the sum of every entry of dcols (c*kh*kw, n*oh*ow) whose
// im2col source is that element (overwrites dx), summed in float32 and rounded
// once to the storage type.
void col2im(Storage storage, const void* dcols, void* dx, const ConvShape& s, cudaStream_t stream);

// Test hooks for the index paths past 2^31 (tests/test_launch.py), which no
// test can allocate: the width the kernels index with for s (32 or 64), and
// the flat input index im2col reads for column entry e (-1 in the padding),
// computed in that width by the kernel's own arithmetic.
int conv_index_bits(const ConvShape& s);
// Test hook of the kernels' fast division (common/fastdiv.cuh), run on the
// device: q[k], r[k] = n[k] / d, n[k] % d for 0 <= n[k], 1 <= d.
void divmod_int32(const int32_t* n, int32_t* q, int32_t* r, int64_t count, int32_t d, cudaStream_t stream);
int64_t im2col_source_index(const ConvShape& s, int64_t e);

}  // namespace gpunet
