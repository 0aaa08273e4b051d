// embedding.cu -- embedding lookup (a row gather) and its deterministic
// weight gradient (a segmented sum per vocabulary row, no float atomics).
// Templated on the storage type T of weight, out, dy and dweight (float,
// __half, __nv_bfloat16; common/storage.h): the gather copies values as they
// are; the gradient sums in float32 and rounds each dweight value once (the
// cpu reference sums the same float32 values in the same order: bit-equal).
//
// embedding_forward
//   Algorithm: grid-stride over the count·dim output elements; element
//     (n, d) copies weight[idx[n], d]. When a row is whole 16-byte vectors
//     (dim % (16 / sizeof(T)) == 0: 4 floats, 8 half values) and both
//     matrices are 16-byte aligned, each thread moves 16 bytes (rows stay
//     aligned).
//   Launch: 256 threads per block, min(ceil(items / 256), 8 per SM) blocks,
//     items = count·dim·sizeof(T) / 16 (vector path) or count·dim.
//   Traffic: reads count·dim·sizeof(T) bytes of weight rows (gathered, each
//     row contiguous) and count·8 of indices, writes count·dim·sizeof(T); no
//     FLOPs.
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
//   Traffic: reads count·dim·sizeof(T) bytes of dy, count·8 of order, vocab·8
//     of row_ptr; writes vocab·dim·sizeof(T) (the dense gradient, zeros
//     included); count·dim float32 adds.
#include <cuda_runtime.h>

#include <algorithm>

#include "common/error_flag.cuh"
#include "common/launch.cuh"
#include "common/storage.cuh"
#include "kernels/embedding.h"

namespace gpunet {
namespace {

// (a 16-byte vector holds 16 / sizeof(T) values of any storage type: the
// gather moves bits, so float4 carries half values too)
template <class T>
__global__ void __launch_bounds__(kThreads)
    embedding_forward_kernel(const T* __restrict__ weight, const int64_t* __restrict__ idx, T* __restrict__ out,
                             int64_t count, int64_t vocab, int64_t dim, bool vec, int64_t* __restrict__ flag) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  if (vec) {
    const int64_t dim4 = dim / (16 / sizeof(T));  // 16-byte vectors per row
    for (int64_t i = first; i < count * dim4; i += step) {
      const int64_t n = i / dim4, d = i - n * dim4;
      const int64_t r = idx[n];
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);  // (all-zero bits: 0 in every storage type)
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
      T v = from_float<T>(0.f);
      if (r >= 0 && r < vocab)
        v = weight[r * dim + d];
      else if (d == 0)
        report_bad_value(flag, kBadEmbeddingIndex, r, vocab, 0);
      out[i] = v;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    embedding_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ order,
                              const int64_t* __restrict__ row_ptr, T* __restrict__ dweight, int64_t count,
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
          if (d < dim && n >= 0 && n < count) sum += to_float(dy[n * dim + d]);
        }
      }
      if (d < dim) dweight[v * dim + d] = from_float<T>(sum);
    }
  }
}

template <class T>
void launch_embedding_forward(const T* weight, const int64_t* idx, T* out, int64_t count, int64_t vocab,
                              int64_t dim, int64_t* flag, cudaStream_t stream) {
  const int64_t per_vector = 16 / sizeof(T);
  const bool vec = dim % per_vector == 0 && aligned16(weight) && aligned16(out);
  embedding_forward_kernel<T><<<grid_for(vec ? count * dim / per_vector : count * dim), kThreads, 0, stream>>>(
      weight, idx, out, count, vocab, dim, vec, flag);
}

}  // namespace

void embedding_forward(Storage storage, const void* weight, const int64_t* idx, void* out, int64_t count,
                       int64_t vocab, int64_t dim, int64_t* flag, cudaStream_t stream) {
  if (count * dim == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    launch_embedding_forward(static_cast<const T*>(weight), idx, static_cast<T*>(out), count, vocab, dim, flag,
                             stream);
  });
}

void embedding_backward(Storage storage, const void* dy, const int64_t* order, const int64_t* row_ptr, void* dweight,
                        int64_t count, int64_t vocab, int64_t dim, int64_t padding_idx, cudaStream_t stream) {
  if (vocab * dim == 0) return;
  const int threads = (int)std::min<int64_t>(kThreads, (dim + 31) / 32 * 32);
  const unsigned blocks = (unsigned)std::min<int64_t>(vocab, 65535);
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    embedding_backward_kernel<T><<<blocks, threads, 0, stream>>>(
        static_cast<const T*>(dy), order, row_ptr, static_cast<T*>(dweight), count, vocab, dim, padding_idx);
  });
}

}  // namespace gpunet
