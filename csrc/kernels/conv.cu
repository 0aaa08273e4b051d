// conv.cu -- im2col and col2im for Conv2d (float32), over a chunk of images.
//
// gpunet/ops/conv.py turns a convolution into GEMMs on a column matrix
// cols (K, n*L), K = C*kh*kw (rows (c, i, j), c outermost so each group's
// rows are contiguous), L = OH*OW (columns (image, oh, ow)); cuBLAS does the
// GEMMs, these kernels do the data movement around them.
//
// im2col
//   Algorithm: one thread per column entry, grid-stride. The flat entry index
//     decomposes as (c, i, j, image, oh, ow), ow fastest, so consecutive
//     threads write consecutive addresses and read input pixels sw apart
//     (coalesced for stride 1). Entries whose source lies in the padding get 0.
//   Launch: 256 threads per block, min(ceil(K*n*L / 256), 1024) blocks.
//   Traffic: writes K*n*L*4 bytes, reads each input pixel up to kh*kw times
//     (from L1/L2; n*C*H*W*4 bytes from DRAM). No FLOPs: the floor is the
//     write, K*n*L*4 / DRAM bandwidth.
//
// col2im
//   Algorithm: the transpose of im2col as a GATHER: one thread per input
//   pixel (image, c, y, x) visits the kh*kw kernel offsets (i, j), keeps those
//   where (y + ph - i*dh) and (x + pw - j*dw) are non-negative multiples of the
//   stride that land inside the output, and sums the matching column entries
//   in (i, j) order. Every output element is written by exactly one thread:
//   no atomics, no zero-fill, bitwise reproducible.
//   Launch: 256 threads per block, min(ceil(n*C*H*W / 256), 1024) blocks.
//   Traffic: reads K*n*L*4 bytes of columns (each entry once overall), writes
//     n*C*H*W*4 bytes; K*n*L adds. Memory bound: floor (K*n*L + n*C*H*W)*4 /
//     DRAM bandwidth. Reads are strided by n*L between kernel offsets but
//     coalesced across neighbouring x for stride 1.
//
// Both kernels index with int32 when every index fits (cheaper division on
// the GPU) and with int64 otherwise.
#include <cuda_runtime.h>

#include <climits>

#include "common/launch.cuh"
#include "kernels/conv.h"

namespace gpunet {
namespace {

// The flat index into x that column entry e copies, or -1 where it lies in
// the padding: the entry decomposes as (c, i, j, image, oy, ox), ox fastest.
template <class Index>
__host__ __device__ __forceinline__ Index im2col_source(const ConvShape& s, Index e) {
  const Index n = (Index)s.n, c_in = (Index)s.c, h = (Index)s.h, w = (Index)s.w, oh = (Index)s.oh, ow = (Index)s.ow;
  Index t = e;
  const Index ox = t % ow;
  t /= ow;
  const Index oy = t % oh;
  t /= oh;
  const Index img = t % n;
  t /= n;
  const Index j = t % s.kw;
  t /= s.kw;
  const Index i = t % s.kh;
  const Index c = t / s.kh;
  const Index y = oy * s.sh - s.ph + i * s.dh;
  const Index xx = ox * s.sw - s.pw + j * s.dw;
  const bool inside = y >= 0 && y < h && xx >= 0 && xx < w;
  return inside ? ((img * c_in + c) * h + y) * w + xx : (Index)-1;
}

template <class Index>
__global__ void __launch_bounds__(kThreads) im2col_kernel(const float* __restrict__ x, float* __restrict__ cols,
                                                          ConvShape s, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const Index src = im2col_source(s, e);
    cols[e] = src >= 0 ? x[src] : 0.f;
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads) col2im_kernel(const float* __restrict__ dcols, float* __restrict__ dx,
                                                          ConvShape s, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  const Index c_in = (Index)s.c, h = (Index)s.h, w = (Index)s.w, oh = (Index)s.oh, ow = (Index)s.ow;
  const Index row_len = (Index)s.n * oh * ow;  // entries per column-matrix row
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index t = e;
    const Index xx = t % w;
    t /= w;
    const Index y = t % h;
    t /= h;
    const Index c = t % c_in;
    const Index img = t / c_in;
    float sum = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const Index ry = y + s.ph - (Index)i * s.dh;  // = oy * sh for the output row that reads (y, i)
      if (ry < 0) break;                          // only decreases with i
      if (ry % s.sh) continue;
      const Index oy = ry / s.sh;
      if (oy >= oh) continue;
      for (int j = 0; j < s.kw; ++j) {
        const Index rx = xx + s.pw - (Index)j * s.dw;
        if (rx < 0) break;
        if (rx % s.sw) continue;
        const Index ox = rx / s.sw;
        if (ox >= ow) continue;
        const Index row = (c * s.kh + i) * s.kw + j;
        sum += dcols[row * row_len + (img * oh + oy) * ow + ox];
      }
    }
    dx[e] = sum;
  }
}

// Whether every flat index either kernel forms (into the column matrix or
// the input) fits int32.
bool fits_int32(const ConvShape& s) {
  return s.c * s.kh * s.kw * s.n * s.oh * s.ow <= INT_MAX && s.n * s.c * s.h * s.w <= INT_MAX;
}

}  // namespace

void im2col(const float* x, float* cols, const ConvShape& s, cudaStream_t stream) {
  const int64_t total = s.c * s.kh * s.kw * s.n * s.oh * s.ow;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    im2col_kernel<Index><<<grid_for(total), kThreads, 0, stream>>>(x, cols, s, (Index)total);
  });
}

void col2im(const float* dcols, float* dx, const ConvShape& s, cudaStream_t stream) {
  const int64_t total = s.n * s.c * s.h * s.w;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    col2im_kernel<Index><<<grid_for(total), kThreads, 0, stream>>>(dcols, dx, s, (Index)total);
  });
}

int conv_index_bits(const ConvShape& s) { return fits_int32(s) ? 32 : 64; }

int64_t im2col_source_index(const ConvShape& s, int64_t e) {
  if (fits_int32(s)) return im2col_source<int32_t>(s, (int32_t)e);
  return im2col_source<int64_t>(s, e);
}

}  // namespace gpunet
