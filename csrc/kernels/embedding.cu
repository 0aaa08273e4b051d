// embedding.cu -- embedding lookup (a row gather) and its deterministic
// weight gradient (a segmented sum per vocabulary row, no float atomics).
//
// embedding_forward
//   Algorithm: grid-stride over the count·dim output elements; element
//     (n, d) copies weight[idx[n], d]. When dim % 4 == 0 and both matrices are
//     16-byte aligned, each thread moves a float4 (rows stay aligned).
//   Launch: 256 threads per block, min(ceil(items / 256), 8 per SM) blocks,
//     items = count·dim / 4 (vector path) or count·dim.
//   Traffic: reads count·dim·4 bytes of weight rows (gathered, each row
//     contiguous) and count·8 of indices, writes count·dim·4; no FLOPs.
//
// embedding_backward
//   The glue sorts the positions by index (stable argsort) and builds the CSR
//   row pointer (searchsorted); then
//   Algorithm: one block per vocabulary row v (grid-stride over rows); thread d
//     (and d + blockDim, ...) sums dy[order[p], d] over the row's positions p
//     in increasing order. A fixed order with no atomics: the same bits on
//     every run. Consecutive threads read consecutive floats of a dy row:
//     coalesced. The positions come 32 at a time, one per lane in one
//     coalesced load, handed round the warp by shuffles (not one broadcast
//     load of order[p] per position and warp). A row used by many positions is summed by one block only
//     (no split-k): a very frequent index serialises; fine for language-model
//     vocabularies where the per-row work is far below the dy read.
//   Launch: min(vocab, 65535) blocks of min(256, dim rounded up to 32) threads.
//   Traffic: reads count·dim·4 bytes of dy, count·8 of order, vocab·8 of
//     row_ptr; writes vocab·dim·4 (the dense gradient, zeros included);
//     count·dim adds.
#include <cuda_runtime.h>

#include <algorithm>

#include "common/error_flag.cuh"
#include "common/launch.cuh"
#include "kernels/embedding.h"

namespace gpunet {
namespace {

__global__ void __launch_bounds__(kThreads)
    embedding_forward_kernel(const float* __restrict__ weight, const int64_t* __restrict__ idx,
                             float* __restrict__ out, int64_t count, int64_t vocab, int64_t dim, bool vec4,
                             int64_t* __restrict__ flag) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  if (vec4) {
    const int64_t dim4 = dim / 4;
    for (int64_t i = first; i < count * dim4; i += step) {
      const int64_t n = i / dim4, d = i - n * dim4;
      const int64_t r = idx[n];
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (r >= 0 && r < vocab)
        v = reinterpret_cast<const float4*>(weight)[r * dim4 + d];
      else if (d == 0)
        report_bad_value(flag, kBadEmbeddingIndex, r, vocab, 0);
      reinterpret_cast<float4*>(out)[i] = v;
    }
  } else {
    for (int64_t i = first; i < count * dim; i += step) {
      const int64_t n = i / dim, d = i - n * dim;
      const int64_t r = idx[n];
      float v = 0.f;
      if (r >= 0 && r < vocab)
        v = weight[r * dim + d];
      else if (d == 0)
        report_bad_value(flag, kBadEmbeddingIndex, r, vocab, 0);
      out[i] = v;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    embedding_backward_kernel(const float* __restrict__ dy, const int64_t* __restrict__ order,
                              const int64_t* __restrict__ row_ptr, float* __restrict__ dweight, int64_t count,
                              int64_t vocab, int64_t dim, int64_t padding_idx) {
  const int lane = threadIdx.x % 32;
  for (int64_t v = blockIdx.x; v < vocab; v += gridDim.x) {
    // clamped, so that a malformed row pointer cannot send a read out of bounds;
    // the padding row sums nothing
    const int64_t begin = row_ptr[v] < 0 ? 0 : row_ptr[v];
    const int64_t end = v == padding_idx ? begin : row_ptr[v + 1] > count ? count : row_ptr[v + 1];
    for (int64_t d0 = 0; d0 < dim; d0 += blockDim.x) {  // every thread of the block iterates alike
      const int64_t d = d0 + threadIdx.x;
      float sum = 0.f;
      for (int64_t p0 = begin; p0 < end; p0 += 32) {
        // each lane loads one of the next 32 positions (one coalesced request);
        // shuffles hand them round, in order
        const int64_t mine = p0 + lane < end ? order[p0 + lane] : -1;
        const int run = (int)(end - p0 < 32 ? end - p0 : 32);
        for (int k = 0; k < run; ++k) {
          const int64_t n = __shfl_sync(0xffffffffu, mine, k);
          if (d < dim && n >= 0 && n < count) sum += dy[n * dim + d];
        }
      }
      if (d < dim) dweight[v * dim + d] = sum;
    }
  }
}

}  // namespace

void embedding_forward(const float* weight, const int64_t* idx, float* out, int64_t count, int64_t vocab,
                       int64_t dim, int64_t* flag, cudaStream_t stream) {
  if (count * dim == 0) return;
  const bool vec4 = dim % 4 == 0 && aligned16(weight) && aligned16(out);
  embedding_forward_kernel<<<grid_for(vec4 ? count * dim / 4 : count * dim), kThreads, 0, stream>>>(
      weight, idx, out, count, vocab, dim, vec4, flag);
}

void embedding_backward(const float* dy, const int64_t* order, const int64_t* row_ptr, float* dweight, int64_t count,
                        int64_t vocab, int64_t dim, int64_t padding_idx, cudaStream_t stream) {
  if (vocab * dim == 0) return;
  const int threads = (int)std::min<int64_t>(kThreads, (dim + 31) / 32 * 32);
  const unsigned blocks = (unsigned)std::min<int64_t>(vocab, 65535);
  embedding_backward_kernel<<<blocks, threads, 0, stream>>>(dy, order, row_ptr, dweight, count, vocab, dim,
                                                            padding_idx);
}

}  // namespace gpunet
