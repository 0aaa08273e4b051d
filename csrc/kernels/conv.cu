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
//   Launch: 256 threads per block, min(ceil(K*n*L / 256), 8 per SM) blocks.
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
//   Launch: 256 threads per block, min(ceil(n*C*H*W / 256), 8 per SM) blocks.
//   Traffic: reads K*n*L*4 bytes of columns (each entry once overall), writes
//     n*C*H*W*4 bytes; K*n*L adds. Memory bound: floor (K*n*L + n*C*H*W)*4 /
//     DRAM bandwidth. Reads are strided by n*L between kernel offsets but
//     coalesced across neighbouring x for stride 1 (shifted by the offset j,
//     so a request of 32 floats spans 5 sectors, not 4; lanes whose pixel
//     has no window at an offset sit it out).
//
// Both kernels index with int32 when every index fits and with int64
// otherwise; their divisions by the extents and strides are multiply-shifts by
// per-launch magic numbers in the int32 case (common/fastdiv.cuh).
#include <cuda_runtime.h>

#include <climits>

#include "common/fastdiv.cuh"
#include "common/launch.cuh"
#include "common/storage.cuh"
#include "kernels/conv.h"

namespace gpunet {
namespace {

// The divisors of im2col's index arithmetic, fixed per launch (common/fastdiv.cuh).
template <class Index>
struct Im2colDivs {
  Divider<Index> ow, oh, n, kw, kh;
  explicit Im2colDivs(const ConvShape& s)
      : ow((Index)s.ow), oh((Index)s.oh), n((Index)s.n), kw((Index)s.kw), kh((Index)s.kh) {}
};

// The flat index into x that column entry e copies, or -1 where it lies in
// the padding: the entry decomposes as (c, i, j, image, oy, ox), ox fastest.
template <class Index>
__host__ __device__ __forceinline__ Index im2col_source(const ConvShape& s, const Im2colDivs<Index>& div, Index e) {
  Index ox, oy, img, j, i;
  Index t = div.ow.divmod(e, ox);
  t = div.oh.divmod(t, oy);
  t = div.n.divmod(t, img);
  t = div.kw.divmod(t, j);
  const Index c = div.kh.divmod(t, i);
  const Index y = oy * s.sh - s.ph + i * s.dh;
  const Index xx = ox * s.sw - s.pw + j * s.dw;
  const bool inside = y >= 0 && y < (Index)s.h && xx >= 0 && xx < (Index)s.w;
  return inside ? ((img * (Index)s.c + c) * (Index)s.h + y) * (Index)s.w + xx : (Index)-1;
}

template <class T, class Index>
__global__ void __launch_bounds__(kThreads) im2col_kernel(const T* __restrict__ x, T* __restrict__ cols,
                                                          ConvShape s, Im2colDivs<Index> div, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const Index src = im2col_source(s, div, e);
    cols[e] = src >= 0 ? x[src] : from_float<T>(0.f);  // a copy: exact in every storage
  }
}

// col2im's divisors: the input extents (to split the flat pixel index) and
// the strides (to find the output pixel of each kernel offset).
template <class Index>
struct Col2imDivs {
  Divider<Index> w, h, c, sh, sw;
  explicit Col2imDivs(const ConvShape& s)
      : w((Index)s.w), h((Index)s.h), c((Index)s.c), sh((Index)s.sh), sw((Index)s.sw) {}
};

template <class T, class Index>
__global__ void __launch_bounds__(kThreads) col2im_kernel(const T* __restrict__ dcols, T* __restrict__ dx,
                                                          ConvShape s, Col2imDivs<Index> div, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  const Index oh = (Index)s.oh, ow = (Index)s.ow;
  const Index row_len = (Index)s.n * oh * ow;  // entries per column-matrix row
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index xx, y, c;
    Index t = div.w.divmod(e, xx);
    t = div.h.divmod(t, y);
    const Index img = div.c.divmod(t, c);
    float sum = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const Index ry = y + s.ph - (Index)i * s.dh;  // = oy * sh for the output row that reads (y, i)
      if (ry < 0) break;                          // only decreases with i
      Index rem;
      const Index oy = div.sh.divmod(ry, rem);
      if (rem || oy >= oh) continue;
      for (int j = 0; j < s.kw; ++j) {
        const Index rx = xx + s.pw - (Index)j * s.dw;
        if (rx < 0) break;
        const Index ox = div.sw.divmod(rx, rem);
        if (rem || ox >= ow) continue;
        const Index row = (c * s.kh + i) * s.kw + j;
        sum += to_float(dcols[row * row_len + (img * oh + oy) * ow + ox]);
      }
    }
    dx[e] = from_float<T>(sum);  // accumulated in float32, rounded once
  }
}

__global__ void __launch_bounds__(kThreads) divmod_kernel(const int32_t* __restrict__ n, int32_t* __restrict__ q,
                                                          int32_t* __restrict__ r, int64_t count,
                                                          Divider<int32_t> d) {
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < count; k += (int64_t)gridDim.x * blockDim.x)
    q[k] = d.divmod(n[k], r[k]);
}

// Whether every flat index either kernel forms (into the column matrix or
// the input) fits int32.
bool fits_int32(const ConvShape& s) {
  return s.c * s.kh * s.kw * s.n * s.oh * s.ow <= INT_MAX && s.n * s.c * s.h * s.w <= INT_MAX;
}

}  // namespace

void im2col(Storage storage, const void* x, void* cols, const ConvShape& s, cudaStream_t stream) {
  const int64_t total = s.c * s.kh * s.kw * s.n * s.oh * s.ow;
  if (total == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_index_type(fits_int32(s), [&](auto index) {
      using Index = decltype(index);
      im2col_kernel<T, Index><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<T*>(cols), s, Im2colDivs<Index>(s), (Index)total);
    });
  });
}

void col2im(Storage storage, const void* dcols, void* dx, const ConvShape& s, cudaStream_t stream) {
  const int64_t total = s.n * s.c * s.h * s.w;
  if (total == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_index_type(fits_int32(s), [&](auto index) {
      using Index = decltype(index);
      col2im_kernel<T, Index><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(dcols), static_cast<T*>(dx), s, Col2imDivs<Index>(s), (Index)total);
    });
  });
}

void divmod_int32(const int32_t* n, int32_t* q, int32_t* r, int64_t count, int32_t d, cudaStream_t stream) {
  if (count == 0) return;
  divmod_kernel<<<grid_for(count), kThreads, 0, stream>>>(n, q, r, count, Divider<int32_t>(d));
}

int conv_index_bits(const ConvShape& s) { return fits_int32(s) ? 32 : 64; }

int64_t im2col_source_index(const ConvShape& s, int64_t e) {
  if (fits_int32(s)) return im2col_source<int32_t>(s, Im2colDivs<int32_t>(s), (int32_t)e);
  return im2col_source<int64_t>(s, Im2colDivs<int64_t>(s), e);
}

}  // namespace gpunet
