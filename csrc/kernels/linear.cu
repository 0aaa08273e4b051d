// linear.cu -- the per-channel bias add and bias gradient of Linear (inner = 1)
// and Conv2d in NCHW (inner = H*W); the products themselves are cuBLAS GEMMs
// made by the Python glue (gpunet/ops/linear.py, gpunet/ops/conv.py).
//
// bias_add
//   Algorithm: y viewed as (outer, C, inner), y[o, c, i] += b[c] in place.
//     Grid-stride; float4 path when y is aligned and inner % 4 == 0 (then
//     the 4 lanes of a vector share one channel).
//   Launch: 256 threads per block, min(ceil(items / 256), resident blocks)
//     blocks (launch.cuh grid_for).
//   Traffic: 8n + 4C bytes, n adds: memory bound. Sectors: y's loads and
//     stores are 4 per request (16 with float4); the bias loads add up to one
//     more where a warp's elements wrap past a row's last channel (4.5-5
//     per request in the profile at C = 64).
//
// bias_grad
//   Algorithm: db[c] = sum over o, i of dy[o, c, i], without atomics, in a
//     fixed order (bitwise reproducible), accumulated in float. Two kernels,
//     by the length of the contiguous runs:
//   inner <= 32 (Linear: inner = 1; small feature maps): dy viewed as the
//     matrix (outer, C·inner); a block owns 32 / inner whole channels, i.e.
//     up to 32 consecutive columns. Lane l of each of the 32 warps sums
//     column l over the rows w, w + 32, ...: a warp reads one contiguous run
//     of a row (4 sectors per request, 5 when the run straddles a 128-byte
//     line). The 32 partials of a column are summed in warp order through
//     shared memory (conflict-free: a warp touches 32 consecutive words),
//     then each channel's inner column sums in order.
//     Launch: ceil(C / (32 / inner)) blocks of 1024 threads.
//   inner > 32 (Conv2d): one block of 256 threads per channel; warp w sums
//     the rows o = w, w + 8, ..., its lanes striding along the channel's
//     contiguous run of inner floats (coalesced, no per-element division);
//     block_reduce_sum (common/reduce.cuh) combines the partials.
//     Launch: C blocks of 256 threads.
//   Half storage (float16, bfloat16): the same kernels templated on the
//     storage type; bias_add reads y and b in float32 and rounds the sum once
//     (16-byte packs of 8 values when y is aligned and inner % 8 == 0), and
//     bias_grad accumulates in float32 and rounds each db[c] once.
//   Traffic: 4n + 4C bytes, n adds (half storage: half of it). Parallelism is capped at the channels
//     (ceil(C·inner / 32) blocks for small inner): splitting the rows over
//     more blocks would need a workspace and a second pass to stay
//     deterministic without atomics.
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "common/storage.cuh"
#include "kernels/linear.h"

namespace gpunet {
namespace {

template <class T>
__global__ void __launch_bounds__(kThreads)
    bias_add_kernel(T* y, const T* __restrict__ b, int64_t n, int64_t channels, int64_t inner, bool vec) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    if (vec) {  // inner % 4 == 0: the four elements of a vector share a channel
      for (int64_t i = first; i < n / 4; i += step) {
        const float bc = b[(i * 4 / inner) % channels];
        float4 v = reinterpret_cast<float4*>(y)[i];
        v.x += bc;
        v.y += bc;
        v.z += bc;
        v.w += bc;
        reinterpret_cast<float4*>(y)[i] = v;
      }
    } else {
      for (int64_t i = first; i < n; i += step) y[i] += b[(i / inner) % channels];
    }
  } else {  // vec: inner % 8 == 0 (a pack of 8 shares a channel)
    elementwise16(n, vec, [=](int64_t k, float v) { return v + to_float(b[(k / inner) % channels]); }, y, y);
  }
}

constexpr int kColWarps = 32;  // row groups of bias_grad_columns_kernel: 1024 threads

template <class T>
__global__ void __launch_bounds__(32 * kColWarps)
    bias_grad_columns_kernel(const T* __restrict__ dy, T* __restrict__ db, int64_t outer, int64_t channels,
                             int inner, int per_block) {
  __shared__ float part[kColWarps][32];
  __shared__ float col_sum[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c0 = (int64_t)blockIdx.x * per_block;
  const int owned = (int)(channels - c0 < per_block ? channels - c0 : per_block);
  const int64_t stride = channels * inner;
  const T* col = dy + c0 * inner + lane;
  float s = 0.f;
  if (lane < owned * inner)
    for (int64_t o = warp; o < outer; o += kColWarps) s += to_float(col[o * stride]);
  part[warp][lane] = s;
  __syncthreads();
  if (warp == 0) {
    float total = 0.f;
    for (int w = 0; w < kColWarps; ++w) total += part[w][lane];
    col_sum[lane] = total;
    __syncwarp();
    if (lane < owned) {
      float sum = 0.f;
      for (int i = 0; i < inner; ++i) sum += col_sum[lane * inner + i];
      db[c0 + lane] = from_float<T>(sum);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) bias_grad_kernel(const T* __restrict__ dy, T* __restrict__ db,
                                                             int64_t outer, int64_t channels, int64_t inner) {
  const int64_t c = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float sum = 0.f;
  for (int64_t o = warp; o < outer; o += kThreads / 32) {
    const T* run = dy + (o * channels + c) * inner;
    for (int64_t i = lane; i < inner; i += 32) sum += to_float(run[i]);
  }
  sum = block_reduce_sum<kThreads>(sum);
  if (threadIdx.x == 0) db[c] = from_float<T>(sum);
}

}  // namespace

void bias_add(Storage storage, void* y_ptr, const void* b_ptr, int64_t outer, int64_t channels, int64_t inner,
              cudaStream_t stream) {
  const int64_t n = outer * channels * inner;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    T* y = static_cast<T*>(y_ptr);
    const T* b = static_cast<const T*>(b_ptr);
    const int64_t per_vector = 16 / sizeof(T);  // a vector's lanes share a channel
    const bool vec = aligned16(y) && inner % per_vector == 0;
    bias_add_kernel<T><<<grid_for(bias_add_kernel<T>, vec ? n / per_vector : n), kThreads, 0, stream>>>(
        y, b, n, channels, inner, vec);
  });
}

void bias_grad(Storage storage, const void* dy_ptr, void* db_ptr, int64_t outer, int64_t channels, int64_t inner,
               cudaStream_t stream) {
  if (channels == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    const T* dy = static_cast<const T*>(dy_ptr);
    T* db = static_cast<T*>(db_ptr);
    if (inner <= 32) {
      const int per_block = 32 / (int)inner;
      const dim3 grid = checked_grid("bias_grad", (channels + per_block - 1) / per_block);
      bias_grad_columns_kernel<T><<<grid, 32 * kColWarps, 0, stream>>>(dy, db, outer, channels, (int)inner,
                                                                       per_block);
    } else {
      bias_grad_kernel<T><<<checked_grid("bias_grad", channels), kThreads, 0, stream>>>(dy, db, outer, channels,
                                                                                       inner);
    }
  });
}

}  // namespace gpunet
