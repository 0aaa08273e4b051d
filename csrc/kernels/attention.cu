// attention.cu -- flash attention on CUDA cores: out = softmax(q kᵀ·scale +
// bias) v, forward and backward, tiled over queries and keys, never
// materialising the L×S score matrix.
//
// Storage: every kernel is templated on the type of q, k, v, out, dout, dq,
// dk, dv (float, __half, __nv_bfloat16). Rows are read into float32
// registers and float32 shared tiles, so the scores, the running max and
// sum, the accumulators, lse and delta are float32 whatever the storage;
// each output is rounded once when stored. The bias and lse/delta stay
// float32. Half rows move element by element (the float4 path is float's).
//
// Layout: q (B, L, E), k (B, S, E), v (B, S, Ev), out/dout (B, L, Ev), B the
// flattened batch·heads. The head dims are padded with zeros to a bucket
// D ∈ {32, 64, 128} (template parameter), so any E, Ev ≤ 128 works; the
// padding costs FLOPs, not correctness. Masks: `causal` (key j > query i
// removed, torch's top-left tril), and an optional additive bias read through
// broadcast strides (AttnBias in attention.h: boolean, float, key-padding
// and per-head masks all arrive as one), so nothing is expanded over heads.
//
// Thread mapping shared by all three main kernels: a block of 128 threads
// owns 32 rows (queries, or keys for dK/dV); each row belongs to a group of
// 4 adjacent lanes, and lane g of the group holds the float4 chunks
// g, g+4, g+8, ... of the row's D features in registers. A dot product of
// two rows is 4 partial dots combined by two xor-shuffles inside the group
// (every lane ends with the same bits). The other operand streams through
// shared memory in tiles of 32 rows; the 4 lanes of a group read 4
// consecutive float4 (64 B) and the 8 groups of a warp read the same row, so
// the shared loads are conflict-free broadcasts.
//
// Registers and occupancy (sm_90 ptxas, D = 128): 177 (forward) to 246
// (dK/dV) registers, one 4-warp block per SM (occupancy 0.125). Left so: each
// lane holds its rows' D/4 features per operand (q, o; k, v, dk, dv) plus
// 32 scores, and fewer would need 8 lanes per row (twice the shuffles per
// dot) or accumulators in shared memory; the 32 independent dots of a tile
// give each warp enough instruction-level parallelism to cover the latency.
//
// attn_forward_kernel<D>
//   Algorithm: each block takes 32 queries of one batch entry; for every tile
//     of 32 keys (K and V tiles in shared memory) it computes the 32 scores of
//     each query, applies scale, bias and masks, and updates the online
//     softmax (running max m, running sum l, accumulator o rescaled by
//     e^{m_old - m_new}). Finally out = o / l and lse = m + log l are written.
//     Rows whose keys are all masked keep m = -inf: they write 0 and lse = -inf.
//     With causal, key tiles past the block's last query are skipped.
//   Launch: B·ceil(L/32) blocks of 128 threads; static smem 2·32·D·4 B
//     (32 KB at D = 128). Registers: q and o rows (2·D/4 floats) + 32 scores.
//   FLOPs: 4·B·L·S·D (2 GEMMs), half with causal; B·L·S exp (computed by
//     each of the 4 lanes). Bytes: the floor reads q, k, v and writes out, lse
//     once: 4·B·(L·E + S·E + S·Ev + L·Ev + L); each query block re-reads its
//     K, V (ceil(L/32)·S·(E + Ev)·4 B per batch entry), which L2 absorbs.
//
// attn_delta_kernel
//   delta[r] = sum_d dout[r, d]·out[r, d]: one warp per row, 4 rows per block
//   of 128 threads. Reads 8·B·L·Ev bytes. A row shorter than 32 floats leaves
//   lanes idle (Ev = 16: 16 lanes, 2 sectors per request, the ideal for 64
//   bytes); the kernel is a small fraction of the backward.
//
// attn_dkdv_kernel<D>
//   Each block owns 32 keys (k, v rows and the dk, dv accumulators in
//   registers) and walks the query tiles (Q, dO tiles, lse and delta in shared
//   memory); per query i it recomputes s = q_i·k_j and dp = dO_i·v_j,
//   p = e^{s·scale + bias - lse_i}, then dv += p·dO_i and
//   dk += p·(dp - delta_i)·q_i. Each dk/dv element is summed by one thread in
//   query order: no atomics, bitwise deterministic. With causal, query tiles
//   before the block's first key are skipped.
//   Launch: B·ceil(S/32) blocks of 128 threads; smem 2·32·D·4 + 256 B.
//
// attn_dq_kernel<D>
//   Each block owns 32 queries (q, dO rows, lse, delta and the dq accumulator
//   in registers) and walks the key tiles (K, V in shared memory):
//   dq += p·(dp - delta)·k_j, in key order (deterministic).
//   Launch: B·ceil(L/32) blocks of 128 threads; smem 2·32·D·4 B.
//   Backward FLOPs: 14·B·L·S·D (QKᵀ and dO Vᵀ are recomputed in both kernels)
//   against 10·B·L·S·D for a backward that keeps P; bytes ≈ the forward's
//   plus dq, dk, dv and dout.
#include <cuda_runtime.h>

#include <cmath>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "common/storage.cuh"
#include "kernels/attention.h"

namespace gpunet {
namespace {

constexpr int kGroup = 4;                             // lanes per row
constexpr int kRowsPerBlock = 32;                     // rows (queries or keys) a block owns
constexpr int kAttnThreads = kGroup * kRowsPerBlock;  // 128
constexpr int kTileRows = 32;                         // rows per shared-memory tile
constexpr int kDeltaRowsPerBlock = kAttnThreads / 32;  // one warp per row
// The main kernels declare __launch_bounds__(kAttnThreads, 1): without the
// explicit minimum of one block per SM, ptxas trades a few spilled bytes
// for occupancy at D = 32 (seen on both sm_80 and sm_90).

static_assert(kRowsPerBlock * kGroup == kAttnThreads, "one group of lanes per row");
static_assert(32 % kGroup == 0, "a group never straddles two warps");

// Sum over the 4 lanes of a group; every lane of the warp must call it.
__device__ __forceinline__ float group_sum(float s) {
  s += __shfl_xor_sync(0xffffffffu, s, 1);
  s += __shfl_xor_sync(0xffffffffu, s, 2);
  return s;
}

// The bias of batch entry bh at query 0, key 0 (null without a bias); the
// kernels add i·stride_row + j. Computed once per thread, outside the loops.
__device__ __forceinline__ const float* bias_base(const AttnBias& b, int64_t bh) {
  return b.ptr ? b.ptr + (bh / b.inner) * b.stride_outer + (bh % b.inner) * b.stride_inner : nullptr;
}

// This lane's chunks (g, g+4, ...) of a row of n floats, zero past n; a null
// row (a query/key past the end) gives zeros. A whole chunk at a 16-byte
// aligned address moves as one float4 (16 sectors per warp request, as the
// 8 rows of a warp's groups are 8 runs of 64 bytes), the rest float by float.
__device__ __forceinline__ bool whole_chunk(const float* row, int d, int n) {
  return d + 4 <= n && reinterpret_cast<uintptr_t>(row + d) % 16 == 0;
}

template <int NC, class T>
__device__ __forceinline__ void load_row(float4 (&r)[NC], const T* row, int n, int g) {
#pragma unroll
  for (int m = 0; m < NC; ++m) {
    const int d = 4 * (g + kGroup * m);
    if constexpr (std::is_same_v<T, float>) {
      if (row && whole_chunk(row, d, n)) {
        r[m] = *reinterpret_cast<const float4*>(row + d);
        continue;
      }
    }
    r[m].x = row && d < n ? to_float(row[d]) : 0.f;
    r[m].y = row && d + 1 < n ? to_float(row[d + 1]) : 0.f;
    r[m].z = row && d + 2 < n ? to_float(row[d + 2]) : 0.f;
    r[m].w = row && d + 3 < n ? to_float(row[d + 3]) : 0.f;
  }
}

// row = r · mul, each value rounded once to the storage type
template <int NC, class T>
__device__ __forceinline__ void store_row(T* row, const float4 (&r)[NC], float mul, int n, int g) {
#pragma unroll
  for (int m = 0; m < NC; ++m) {
    const int d = 4 * (g + kGroup * m);
    if constexpr (std::is_same_v<T, float>) {
      if (whole_chunk(row, d, n)) {
        *reinterpret_cast<float4*>(row + d) = float4{r[m].x * mul, r[m].y * mul, r[m].z * mul, r[m].w * mul};
        continue;
      }
    }
    if (d < n) row[d] = from_float<T>(r[m].x * mul);
    if (d + 1 < n) row[d + 1] = from_float<T>(r[m].y * mul);
    if (d + 2 < n) row[d + 2] = from_float<T>(r[m].z * mul);
    if (d + 3 < n) row[d + 3] = from_float<T>(r[m].w * mul);
  }
}

template <int NC>
__device__ __forceinline__ void zero(float4 (&r)[NC]) {
#pragma unroll
  for (int m = 0; m < NC; ++m) r[m] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// Partial dot of this lane's register chunks with its chunks of a tile row.
template <int NC>
__device__ __forceinline__ float dot_chunks(const float4 (&a)[NC], const float4* row, int g) {
  float s = 0.f;
#pragma unroll
  for (int m = 0; m < NC; ++m) {
    const float4 b = row[g + kGroup * m];
    s += a[m].x * b.x + a[m].y * b.y + a[m].z * b.z + a[m].w * b.w;
  }
  return s;
}

// acc += a · (this lane's chunks of a tile row)
template <int NC>
__device__ __forceinline__ void axpy_chunks(float4 (&acc)[NC], float a, const float4* row, int g) {
#pragma unroll
  for (int m = 0; m < NC; ++m) {
    const float4 b = row[g + kGroup * m];
    acc[m].x += a * b.x;
    acc[m].y += a * b.y;
    acc[m].z += a * b.z;
    acc[m].w += a * b.w;
  }
}

template <int NC>
__device__ __forceinline__ void scale_chunks(float4 (&acc)[NC], float a) {
#pragma unroll
  for (int m = 0; m < NC; ++m) {
    acc[m].x *= a;
    acc[m].y *= a;
    acc[m].z *= a;
    acc[m].w *= a;
  }
}

// Rows [r0, r0 + kTileRows) of a (nrows, n) matrix into a kTileRows × D
// shared tile, zero-padded past n columns and nrows rows. Coalesced along n.
template <int D, class T>
__device__ __forceinline__ void load_tile(float4* tile, const T* src, int64_t r0, int64_t nrows, int n) {
  float* t = reinterpret_cast<float*>(tile);
  for (int idx = threadIdx.x; idx < kTileRows * D; idx += kAttnThreads) {
    const int r = idx / D, d = idx % D;
    const int64_t gr = r0 + r;
    t[idx] = gr < nrows && d < n ? to_float(src[gr * n + d]) : 0.f;
  }
}

// Where a thread of a query block (forward, dq) stands: batch entry bh, its
// query i (row_ok: i < L) and its lane g in the row's group, and what its
// walk over the key tiles needs: the entry's k and v, the row of the mask
// (nullptr without one) and the end of the keys (with causal, the keys past
// the block's last query are skipped).
template <class T>
struct QueryRow {
  int64_t bh, i;
  int g;
  bool row_ok;
  const T *kb, *vb;
  const float* brow;
  int64_t s_end;
};

template <class T>
__device__ __forceinline__ QueryRow<T> query_row(const T* k, const T* v, const AttnBias& bias, int causal,
                                              int64_t L, int64_t S, int E, int Ev, int64_t q_blocks) {
  const int64_t bh = blockIdx.x / q_blocks;
  const int64_t q0 = (blockIdx.x % q_blocks) * kRowsPerBlock;
  const int64_t i = q0 + threadIdx.x / kGroup;
  const bool row_ok = i < L;
  return {bh,
          i,
          (int)(threadIdx.x % kGroup),
          row_ok,
          k + bh * S * E,
          v + bh * S * Ev,
          row_ok && bias.ptr ? bias_base(bias, bh) + i * bias.stride_row : nullptr,
          causal ? (S < q0 + kRowsPerBlock ? S : q0 + kRowsPerBlock) : S};
}

template <int D, class T>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attn_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        AttnBias bias, int causal, float scale, T* __restrict__ out, float* __restrict__ lse,
                        int64_t L, int64_t S, int E, int Ev, int64_t q_blocks) {
  constexpr int NC = D / (4 * kGroup);
  constexpr int D4 = D / 4;
  __shared__ float4 ks[kTileRows * D4];
  __shared__ float4 vs[kTileRows * D4];
  const auto [bh, i, g, row_ok, kb, vb, brow, s_end] = query_row(k, v, bias, causal, L, S, E, Ev, q_blocks);

  float4 qr[NC], acc[NC];
  load_row<NC>(qr, row_ok ? q + (bh * L + i) * E : nullptr, E, g);
  zero<NC>(acc);
  float m = -INFINITY, l = 0.f;

  for (int64_t k0 = 0; k0 < s_end; k0 += kTileRows) {
    load_tile<D>(ks, kb, k0, S, E);
    load_tile<D>(vs, vb, k0, S, Ev);
    __syncthreads();
    float p[kTileRows];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < kTileRows; ++c) {
      const float s = group_sum(dot_chunks<NC>(qr, ks + c * D4, g));
      const int64_t j = k0 + c;
      float sc = s * scale;
      if (j >= S || (causal && j > i)) {
        sc = -INFINITY;
      } else if (brow) {
        sc += brow[j];
      }
      p[c] = sc;
      tile_max = fmaxf(tile_max, sc);
    }
    const float m_new = fmaxf(m, tile_max);
    // every key so far removed: keep exp(-inf) = 0 everywhere instead of inf - inf
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = expf(m - m_use);
    l *= alpha;
    scale_chunks<NC>(acc, alpha);
#pragma unroll
    for (int c = 0; c < kTileRows; ++c) {
      const float pc = expf(p[c] - m_use);
      l += pc;
      axpy_chunks<NC>(acc, pc, vs + c * D4, g);
    }
    m = m_new;
    __syncthreads();  // the next tile overwrites ks, vs
  }
  if (row_ok) {
    store_row<NC>(out + (bh * L + i) * Ev, acc, l > 0.f ? 1.f / l : 0.f, Ev, g);
    if (g == 0) lse[bh * L + i] = l > 0.f ? m + logf(l) : -INFINITY;
  }
}

template <class T>
__global__ void __launch_bounds__(kAttnThreads)
    attn_delta_kernel(const T* __restrict__ out, const T* __restrict__ dout, float* __restrict__ delta,
                      int64_t rows, int Ev) {
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * kDeltaRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // whole warp
  float s = 0.f;
  for (int d = lane; d < Ev; d += 32) s += to_float(out[r * Ev + d]) * to_float(dout[r * Ev + d]);
  s = warp_reduce_sum(s);
  if (lane == 0) delta[r] = s;
}

template <int D, class T>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attn_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                     AttnBias bias, int causal, float scale, T* __restrict__ dk, T* __restrict__ dv,
                     int64_t L, int64_t S, int E, int Ev, int64_t k_blocks) {
  constexpr int NC = D / (4 * kGroup);
  constexpr int D4 = D / 4;
  __shared__ float4 qs[kTileRows * D4];
  __shared__ float4 dos[kTileRows * D4];
  __shared__ float lse_s[kTileRows];
  __shared__ float delta_s[kTileRows];
  const int64_t bh = blockIdx.x / k_blocks;
  const int64_t j0 = (blockIdx.x % k_blocks) * kRowsPerBlock;
  const int g = threadIdx.x % kGroup;
  const int64_t j = j0 + threadIdx.x / kGroup;
  const bool col_ok = j < S;

  float4 kr[NC], vr[NC], dk_acc[NC], dv_acc[NC];
  load_row<NC>(kr, col_ok ? k + (bh * S + j) * E : nullptr, E, g);
  load_row<NC>(vr, col_ok ? v + (bh * S + j) * Ev : nullptr, Ev, g);
  zero<NC>(dk_acc);
  zero<NC>(dv_acc);
  const T* qb = q + bh * L * E;
  const T* dob = dout + bh * L * Ev;
  // causal: queries before j0 see none of this block's keys
  const int64_t i_begin = causal ? (j0 / kTileRows) * kTileRows : 0;
  const float* bcol = col_ok && bias.ptr ? bias_base(bias, bh) + j : nullptr;
  const int64_t bias_row = bias.stride_row;

  for (int64_t i0 = i_begin; i0 < L; i0 += kTileRows) {
    load_tile<D>(qs, qb, i0, L, E);
    load_tile<D>(dos, dob, i0, L, Ev);
    if (threadIdx.x < kTileRows) {
      const int64_t i = i0 + threadIdx.x;
      lse_s[threadIdx.x] = i < L ? lse[bh * L + i] : -INFINITY;
      delta_s[threadIdx.x] = i < L ? delta[bh * L + i] : 0.f;
    }
    __syncthreads();
#pragma unroll 4
    for (int r = 0; r < kTileRows; ++r) {
      const int64_t i = i0 + r;
      const float s = group_sum(dot_chunks<NC>(kr, qs + r * D4, g));
      const float dp = group_sum(dot_chunks<NC>(vr, dos + r * D4, g));
      const float li = lse_s[r];
      float p = 0.f;
      if (col_ok && li != -INFINITY && !(causal && j > i)) {  // li = -inf also covers i >= L
        float sc = s * scale;
        if (bcol) sc += bcol[i * bias_row];
        p = expf(sc - li);
      }
      axpy_chunks<NC>(dv_acc, p, dos + r * D4, g);
      axpy_chunks<NC>(dk_acc, p * (dp - delta_s[r]), qs + r * D4, g);
    }
    __syncthreads();
  }
  if (col_ok) {
    store_row<NC>(dk + (bh * S + j) * E, dk_acc, scale, E, g);
    store_row<NC>(dv + (bh * S + j) * Ev, dv_acc, 1.f, Ev, g);
  }
}

template <int D, class T>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attn_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                   AttnBias bias, int causal, float scale, T* __restrict__ dq, int64_t L, int64_t S, int E,
                   int Ev, int64_t q_blocks) {
  constexpr int NC = D / (4 * kGroup);
  constexpr int D4 = D / 4;
  __shared__ float4 ks[kTileRows * D4];
  __shared__ float4 vs[kTileRows * D4];
  const auto [bh, i, g, row_ok, kb, vb, brow, s_end] = query_row(k, v, bias, causal, L, S, E, Ev, q_blocks);

  float4 qr[NC], dor[NC], dq_acc[NC];
  load_row<NC>(qr, row_ok ? q + (bh * L + i) * E : nullptr, E, g);
  load_row<NC>(dor, row_ok ? dout + (bh * L + i) * Ev : nullptr, Ev, g);
  zero<NC>(dq_acc);
  const float li = row_ok ? lse[bh * L + i] : -INFINITY;
  const float di = row_ok ? delta[bh * L + i] : 0.f;

  for (int64_t k0 = 0; k0 < s_end; k0 += kTileRows) {
    load_tile<D>(ks, kb, k0, S, E);
    load_tile<D>(vs, vb, k0, S, Ev);
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kTileRows; ++c) {
      const int64_t j = k0 + c;
      const float s = group_sum(dot_chunks<NC>(qr, ks + c * D4, g));
      const float dp = group_sum(dot_chunks<NC>(dor, vs + c * D4, g));
      float p = 0.f;
      if (j < S && li != -INFINITY && !(causal && j > i)) {  // li = -inf also covers i >= L
        float sc = s * scale;
        if (brow) sc += brow[j];
        p = expf(sc - li);
      }
      axpy_chunks<NC>(dq_acc, p * (dp - di), ks + c * D4, g);
    }
    __syncthreads();
  }
  if (row_ok) store_row<NC>(dq + (bh * L + i) * E, dq_acc, scale, E, g);
}

int64_t blocks_for(int64_t n) { return (n + kRowsPerBlock - 1) / kRowsPerBlock; }

template <int D, class T>
void launch_forward(const T* q, const T* k, const T* v, const AttnBias& bias, bool causal, float scale, T* out,
                    float* lse, int64_t batch, int64_t L, int64_t S, int E, int Ev, cudaStream_t stream) {
  const int64_t qb = blocks_for(L);
  attn_forward_kernel<D, T><<<checked_grid("attention_forward", batch * qb), kAttnThreads, 0, stream>>>(
      q, k, v, bias, causal, scale, out, lse, L, S, E, Ev, qb);
}

template <int D, class T>
void launch_backward(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
                     const AttnBias& bias, bool causal, float scale, T* dq, T* dk, T* dv, int64_t batch, int64_t L,
                     int64_t S, int E, int Ev, cudaStream_t stream) {
  const int64_t kb = blocks_for(S), qb = blocks_for(L);
  attn_dkdv_kernel<D, T><<<dim3((unsigned)(batch * kb)), kAttnThreads, 0, stream>>>(
      q, k, v, dout, lse, delta, bias, causal, scale, dk, dv, L, S, E, Ev, kb);
  attn_dq_kernel<D, T><<<dim3((unsigned)(batch * qb)), kAttnThreads, 0, stream>>>(
      q, k, v, dout, lse, delta, bias, causal, scale, dq, L, S, E, Ev, qb);
}

// f(std::integral_constant<int, D>) for the padded head-dim bucket of max(E, Ev).
template <class F>
void with_bucket(int E, int Ev, F&& f) {
  const int e = E > Ev ? E : Ev;
  if (e <= 32) return f(std::integral_constant<int, 32>{});
  if (e <= 64) return f(std::integral_constant<int, 64>{});
  return f(std::integral_constant<int, 128>{});
}

}  // namespace

void attention_forward(Storage storage, const void* q, const void* k, const void* v, const AttnBias& bias,
                       bool causal, float scale, void* out, float* lse, int64_t batch, int64_t L, int64_t S, int E,
                       int Ev, cudaStream_t stream) {
  if (batch == 0 || L == 0 || S == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_bucket(E, Ev, [&](auto d) {
      launch_forward<decltype(d)::value>(static_cast<const T*>(q), static_cast<const T*>(k),
                                         static_cast<const T*>(v), bias, causal, scale, static_cast<T*>(out), lse,
                                         batch, L, S, E, Ev, stream);
    });
  });
}

void attention_backward(Storage storage, const void* q, const void* k, const void* v, const void* out,
                        const void* dout, const float* lse, const AttnBias& bias, bool causal, float scale, void* dq,
                        void* dk, void* dv, float* delta, int64_t batch, int64_t L, int64_t S, int E, int Ev,
                        cudaStream_t stream) {
  if (batch == 0 || L == 0 || S == 0) return;
  const int64_t rows = batch * L;
  // every grid checked before the first launch (the main kernels': blocks_for(max(L, S)) per batch entry)
  const dim3 delta_grid = checked_grid("attention_backward", (rows + kDeltaRowsPerBlock - 1) / kDeltaRowsPerBlock);
  checked_grid("attention_backward", batch * blocks_for(L > S ? L : S));
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    attn_delta_kernel<T><<<delta_grid, kAttnThreads, 0, stream>>>(static_cast<const T*>(out),
                                                                   static_cast<const T*>(dout), delta, rows, Ev);
    with_bucket(E, Ev, [&](auto d) {
      launch_backward<decltype(d)::value>(static_cast<const T*>(q), static_cast<const T*>(k),
                                          static_cast<const T*>(v), static_cast<const T*>(dout), lse, delta, bias,
                                          causal, scale, static_cast<T*>(dq), static_cast<T*>(dk),
                                          static_cast<T*>(dv), batch, L, S, E, Ev, stream);
    });
  });
}

}  // namespace gpunet
