// attention_tc.cu -- FlashAttention-2 on tensor cores: out = softmax(q kᵀ·scale) v
// for float16 / bfloat16 storage, head dim d any multiple of 8 up to 128,
// optional causal mask (torch's top-left tril), forward and backward. fp32
// accumulators, the softmax in fp32 registers; the matrix products on
// mma.sync m16n8k16 (common/mma.cuh); K/V (forward) and Q/dO (backward)
// tiles stream through shared memory double-buffered with cp.async. Other
// head dims, biases and float32 take the CUDA-core kernels of attention.cu.
//
// Head dims: the kernels are instantiated for D = 16, 32, 64 and 128 (the
// k-dimension of Q Kᵀ is D: whole m16n8k16 k-steps); a head dim d < D (d a
// multiple of 8, D the smallest instance >= d, as FlashAttention-2 rounds up)
// runs in the D instance with the columns d..D-1 of the Q, K, V, dO tiles
// zero-filled by cp.async in shared memory: they add 0 to S and dP, and the
// columns of O, dQ, dK, dV past d are computed but never stored.
//
// Layout: q (B, L, d), k, v (B, S, d), out/dout (B, L, d), B = batch·heads,
// rows contiguous. Shared-memory tiles keep rows of D 16-bit values padded by
// 8 (16 bytes): the row stride is an odd number of 16-byte chunks, so the 8
// rows an ldmatrix phase reads at one column fall on 8 distinct 4-bank
// groups; cp.async lanes store 8 distinct groups per phase too (load_tile),
// so neither conflicts at any D.
//
// attn_tc_forward_kernel<T, D, kCausal>
//   A block of 4 warps owns 64 queries, 16 per warp (Q fragments in
//   registers, loaded once by ldmatrix). For each tile of 64 keys: S = Q Kᵀ
//   (ldmatrix of K rows as the "col" B operand), masking (ragged tail,
//   causal), online softmax per row in the log2 domain (running max m and
//   per-lane partial sums l; the 4 lanes holding a row reduce with two xor
//   shuffles), P rounded to T and reused from the accumulator registers as
//   the A fragments of O += P V (ldmatrix.trans of V). Tiles of keys past the
//   block's last query are skipped with kCausal. lse = (m + log2 l)·ln 2.
//   Launch: B·ceil(L/64) blocks of 128 threads; dynamic smem
//   (64 + 4·64)·(D+8)·2 B (Q, K and V double-buffered): 15 KiB at D = 16,
//   25 KiB at D = 32, 45 KiB at D = 64, 85 KiB at D = 128. ptxas (sm_80 /
//   sm_90): 96 / 88-96 registers at D = 16, 127-128 / 112-117 at D = 32,
//   164-167 / 136-158 at D = 64, 224-234 / 206-230 at D = 128, no spills
//   (__launch_bounds__(128, 1): without the explicit minimum, ptxas held
//   D = 64 to 128 registers and spilled).
//   FLOPs 4·B·L·S·d (half with causal).
//
// attn_tc_delta_kernel: delta[r] = Σ_d dO[r, d]·O[r, d] in float32 (one warp
//   per row) and dq_accum[r, :] = 0.
//
// attn_tc_backward_kernel<T, D, kCausal>
//   A block of 4 warps owns 64 keys, 16 per warp; dK and dV of those rows
//   accumulate in registers. It walks the query tiles (kBq queries: 64 at
//   D = 64, 32 at D = 128 to bound the registers), Q and dO tiles
//   double-buffered, lse and delta of the tile beside them. Per tile a warp
//   forms Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (16 keys × kBq queries, K and V
//   fragments by ldmatrix from the block's K/V tile), Pᵀ = exp(Sᵀ·scale −
//   lse), dSᵀ = Pᵀ∘(dPᵀ − delta), then dV += Pᵀ dO and dK += dSᵀ Q with Pᵀ
//   and dSᵀ reused as A fragments. dSᵀ also goes to shared memory, from where
//   the block computes dQ_tile = dS K (dS as A by ldmatrix.trans) and adds it
//   to dq_accum with float atomics (order varies: dq is not bitwise
//   reproducible, dk and dv are). With kCausal, query tiles before the
//   block's first key are skipped.
//   Launch: B·ceil(S/64) blocks of 128 threads; dynamic smem
//   (2·64 + 4·kBq)·(D+8)·2 + 64·(kBq+8)·2 + 4·kBq·4 B: 28 KiB at D = 16,
//   40 KiB at D = 32, 64 KiB at D = 64, 73.5 KiB at D = 128. ptxas (sm_80 /
//   sm_90): 139-142 / 158-169 registers at D = 16, 178-182 / 182-186 at
//   D = 32, 226-229 / 237-240 at D = 64, 255 / 249-250 at D = 128 (the runtime
//   head dim costs D = 128 about 10 over 240 before), no spills.
//
// attn_tc_dq_kernel: dq = T(dq_accum), elementwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/launch.cuh"
#include "common/mma.cuh"
#include "common/storage.cuh"
#include "kernels/attention_tc.h"

namespace gpunet {
namespace {

constexpr int kTcThreads = 128;  // 4 warps
constexpr int kRows = 64;      // forward: queries per block; backward: keys per block
constexpr int kKeys = 64;      // forward: keys per tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
constexpr int kStride = D + 8;  // shared-memory row stride (16-bit values)

template <int D>
constexpr int kBwdQueries = D == 128 ? 32 : 64;  // backward: queries per tile

// Two floats rounded to T, packed as one register (the first in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const auto p = HalfPair<T>::from_float2(lo, hi);
  uint32_t u;
  memcpy(&u, &p, sizeof u);
  return u;
}

// rows [r0, r0 + rows) of an (n, d) matrix -> a shared tile of D columns (row
// stride D+8) by cp.async, 16 bytes per thread and step; rows past n and
// columns past d are zero-filled. The 8 lanes of a quarter-warp phase store
// 8 distinct 16-byte bank groups: along one row when a row has 8 chunks or
// more, else one column chunk of 8 consecutive rows (the odd row stride
// spreads them; rows % 8 == 0). Either way a warp's 32 copies read 512
// contiguous bytes when d = D.
template <class T, int D>
__device__ __forceinline__ void load_tile(T* tile, const T* g, int64_t r0, int64_t n, int rows, int d) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += kTcThreads) {
    const int r = kChunks >= 8 ? c / kChunks : c / (8 * kChunks) * 8 + c % 8;
    const int k = kChunks >= 8 ? c % kChunks : c / 8 % kChunks;
    const bool in = r0 + r < n && k * 8 < d;
    tc::cp_async_16(tile + r * kStride<D> + k * 8, in ? g + (r0 + r) * d + k * 8 : g, in);
  }
}

// A fragments of rows [row0, row0 + 16), columns [col0, col0 + 16) of a
// row-major shared tile: ldmatrix.x4 on its four 8x8 quadrants.
template <class T, int kStrideT>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  tc::ldmatrix_x4(a, tile + (row0 + lane % 16) * kStrideT + col0 + 8 * (lane / 16));
}

// B fragments of two n-tiles, n in [n0, n0 + 16), k in [k0, k0 + 16), from a
// tile stored n-major (row = n, column = k): b0 for n0.., b1 for n0 + 8...
template <class T, int kStrideT>
__device__ __forceinline__ void load_b_nmajor(uint32_t (&b0)[2], uint32_t (&b1)[2], const T* tile, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  uint32_t r[4];
  tc::ldmatrix_x4(r, tile + (n0 + lane % 8 + 8 * (lane / 16)) * kStrideT + k0 + 8 * ((lane / 8) % 2));
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// The same from a tile stored k-major (row = k, column = n): ldmatrix.trans.
template <class T, int kStrideT>
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b0)[2], uint32_t (&b1)[2], const T* tile, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  uint32_t r[4];
  tc::ldmatrix_x4_trans(r, tile + (k0 + lane % 8 + 8 * ((lane / 8) % 2)) * kStrideT + n0 + 8 * (lane / 16));
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// acc[nt] (16 x 8 n-tiles, nt < kN) += A(16 x 16·kK, fragments by a_of(kk)) · B
template <class T, int kK, int kN, class AOf, class BOf>
__device__ __forceinline__ void gemm(float (&acc)[kN][4], AOf a_of, BOf b_of) {
#pragma unroll
  for (int kk = 0; kk < kK; ++kk) {
    uint32_t a[4];
    a_of(a, kk);
#pragma unroll
    for (int np = 0; np < kN / 2; ++np) {
      uint32_t b0[2], b1[2];
      b_of(b0, b1, kk, np);
      tc::mma_m16n8k16<T>(acc[2 * np], a, b0);
      tc::mma_m16n8k16<T>(acc[2 * np + 1], a, b1);
    }
  }
}

// A fragments of the k-chunk kk (16 columns) from accumulators x (16 x 8·kN)
// rounded to T: the C layout of n-tiles 2kk and 2kk+1 is the A layout.
template <class T, int kN>
__device__ __forceinline__ void a_from_acc(uint32_t (&a)[4], const float (&x)[kN][4], int kk) {
  a[0] = pack<T>(x[2 * kk][0], x[2 * kk][1]);
  a[1] = pack<T>(x[2 * kk][2], x[2 * kk][3]);
  a[2] = pack<T>(x[2 * kk + 1][0], x[2 * kk + 1][1]);
  a[3] = pack<T>(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(kTcThreads, 1)
    attn_tc_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           T* __restrict__ out, float* __restrict__ lse, int64_t L, int64_t S, int d,
                           float scale_log2) {
  extern __shared__ uint4 smem_tc[];
  constexpr int kS = kStride<D>;
  T* sq = reinterpret_cast<T*>(smem_tc);
  T* sk = sq + kRows * kS;     // 2 buffers
  T* sv = sk + 2 * kKeys * kS; // 2 buffers
  const int64_t b = blockIdx.y, q0 = (int64_t)blockIdx.x * kRows;
  q += b * L * d, k += b * S * d, v += b * S * d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t last_key = kCausal ? (q0 + kRows < S ? q0 + kRows : S) : S;  // keys [0, last_key) can be seen
  const int tiles = (int)((last_key + kKeys - 1) / kKeys);

  load_tile<T, D>(sq, q, q0, L, kRows, d);
  load_tile<T, D>(sk, k, 0, S, kKeys, d);
  load_tile<T, D>(sv, v, 0, S, kKeys, d);
  tc::cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g, g + 8 of the warp
  for (int j = 0; j < tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < tiles) {  // prefetch the next K/V tile into the other buffer
      load_tile<T, D>(sk + (buf ^ 1) * kKeys * kS, k, (int64_t)(j + 1) * kKeys, S, kKeys, d);
      load_tile<T, D>(sv + (buf ^ 1) * kKeys * kS, v, (int64_t)(j + 1) * kKeys, S, kKeys, d);
      tc::cp_async_commit();
      tc::cp_async_wait<1>();
    } else {
      tc::cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0)
      for (int kk = 0; kk < D / 16; ++kk) load_a<T, kS>(qf[kk], sq, warp * 16, kk * 16);
    const T* K = sk + buf * kKeys * kS;
    const T* V = sv + buf * kKeys * kS;

    float s[kKeys / 8][4] = {};
    gemm<T, D / 16, kKeys / 8>(
        s, [&](uint32_t(&a)[4], int kk) { memcpy(a, qf[kk], sizeof a); },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) { load_b_nmajor<T, kS>(b0, b1, K, np * 16, kk * 16); });

    // mask, scale to the log2 domain, new running max per row
    float mnew[2] = {m[0], m[1]};
    for (int nt = 0; nt < kKeys / 8; ++nt)
      for (int e = 0; e < 4; ++e) {
        const int64_t key = (int64_t)j * kKeys + nt * 8 + 2 * t + e % 2;
        const int64_t row = q0 + warp * 16 + g + 8 * (e / 2);
        const bool keep = key < S && (!kCausal || key <= row);
        s[nt][e] = keep ? s[nt][e] * scale_log2 : -INFINITY;
        mnew[e / 2] = fmaxf(mnew[e / 2], s[nt][e]);
      }
    float base[2];
    for (int h = 0; h < 2; ++h) {
      mnew[h] = fmaxf(mnew[h], __shfl_xor_sync(0xffffffffu, mnew[h], 1));
      mnew[h] = fmaxf(mnew[h], __shfl_xor_sync(0xffffffffu, mnew[h], 2));
      base[h] = mnew[h] == -INFINITY ? 0.f : mnew[h];  // a row without keys so far: p = 0, no NaN
      const float alpha = exp2f(m[h] - base[h]);
      l[h] *= alpha;
      for (int dn = 0; dn < D / 8; ++dn) o[dn][2 * h] *= alpha, o[dn][2 * h + 1] *= alpha;
      m[h] = mnew[h];
    }
    for (int nt = 0; nt < kKeys / 8; ++nt)
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - base[e / 2]);
        l[e / 2] += s[nt][e];
      }
    gemm<T, kKeys / 16, D / 8>(
        o, [&](uint32_t(&a)[4], int kk) { a_from_acc<T>(a, s, kk); },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) { load_b_kmajor<T, kS>(b0, b1, V, kk * 16, np * 16); });
    __syncthreads();  // the next prefetch overwrites this buffer
  }

  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    const int64_t row = q0 + warp * 16 + g + 8 * h;
    if (row >= L) continue;
    const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
    uint32_t* orow = reinterpret_cast<uint32_t*>(out + (b * L + row) * d);
    for (int dn = 0; dn < D / 8 && dn * 8 < d; ++dn)
      orow[dn * 4 + t] = pack<T>(o[dn][2 * h] * inv, o[dn][2 * h + 1] * inv);
    if (t == 0) lse[b * L + row] = l[h] > 0.f ? (m[h] + log2f(l[h])) * kLn2 : -INFINITY;
  }
}

template <class T>
__global__ void __launch_bounds__(kTcThreads, 1)
    attn_tc_delta_kernel(const T* __restrict__ out, const T* __restrict__ dout, float* __restrict__ delta,
                         float* __restrict__ dq_accum, int64_t rows, int d) {
  const int64_t r = (int64_t)blockIdx.x * (kTcThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  using H = HalfPair<T>;
  using P2 = typename H::type;
  const P2* o2 = reinterpret_cast<const P2*>(out + r * d);
  const P2* d2 = reinterpret_cast<const P2*>(dout + r * d);
  float acc = 0.f;
  for (int c = lane; c < d / 2; c += 32) {
    const float2 a = H::to_float2(o2[c]), b = H::to_float2(d2[c]);
    acc += a.x * b.x + a.y * b.y;
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) delta[r] = acc;
  for (int c = lane; c < d; c += 32) dq_accum[r * d + c] = 0.f;
}

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(kTcThreads, 1)
    attn_tc_backward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const float* __restrict__ lse,
                            const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
                            float* __restrict__ dq_accum, int64_t L, int64_t S, int d, float scale) {
  extern __shared__ uint4 smem_tc[];
  constexpr int kS = kStride<D>, kBq = kBwdQueries<D>, kDs = kBq + 8;
  T* sk = reinterpret_cast<T*>(smem_tc);
  T* sv = sk + kRows * kS;
  T* sq = sv + kRows * kS;   // 2 buffers
  T* sdo = sq + 2 * kBq * kS;  // 2 buffers
  T* sds = sdo + 2 * kBq * kS; // dSᵀ: kRows keys x kBq queries
  float* slse = reinterpret_cast<float*>(sds + kRows * kDs);  // 2 buffers, log2 domain
  float* sdelta = slse + 2 * kBq;                               // 2 buffers
  const int64_t b = blockIdx.y, k0 = (int64_t)blockIdx.x * kRows;
  q += b * L * d, k += b * S * d, v += b * S * d, dout += b * L * d, lse += b * L, delta += b * L;
  dq_accum += b * L * d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float scale_log2 = scale * kLog2e;
  const int first = kCausal ? (int)(k0 / kBq) : 0;  // earlier queries see none of these keys
  const int tiles = (int)((L + kBq - 1) / kBq);

  auto prefetch = [&](int j, int buf) {
    load_tile<T, D>(sq + buf * kBq * kS, q, (int64_t)j * kBq, L, kBq, d);
    load_tile<T, D>(sdo + buf * kBq * kS, dout, (int64_t)j * kBq, L, kBq, d);
    tc::cp_async_commit();
    const int64_t i = (int64_t)j * kBq + threadIdx.x;
    if (threadIdx.x < kBq) {  // plain loads: visible after the next barrier
      const float x = i < L ? lse[i] : -INFINITY;
      slse[buf * kBq + threadIdx.x] = x * kLog2e;
      sdelta[buf * kBq + threadIdx.x] = i < L ? delta[i] : 0.f;
    }
  };
  load_tile<T, D>(sk, k, k0, S, kRows, d);
  load_tile<T, D>(sv, v, k0, S, kRows, d);
  tc::cp_async_commit();
  if (first < tiles) prefetch(first, first & 1);

  float dkacc[D / 8][4] = {}, dvacc[D / 8][4] = {};
  for (int j = first; j < tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < tiles) {
      prefetch(j + 1, buf ^ 1);
      tc::cp_async_wait<1>();
    } else {
      tc::cp_async_wait<0>();
    }
    __syncthreads();
    const T* Q = sq + buf * kBq * kS;
    const T* dO = sdo + buf * kBq * kS;
    const float* tlse = slse + buf * kBq;
    const float* tdelta = sdelta + buf * kBq;

    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for the warp's 16 keys
    float p[kBq / 8][4] = {}, ds[kBq / 8][4] = {};
    gemm<T, D / 16, kBq / 8>(
        p, [&](uint32_t(&a)[4], int kk) { load_a<T, kS>(a, sk, warp * 16, kk * 16); },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) { load_b_nmajor<T, kS>(b0, b1, Q, np * 16, kk * 16); });
    gemm<T, D / 16, kBq / 8>(
        ds, [&](uint32_t(&a)[4], int kk) { load_a<T, kS>(a, sv, warp * 16, kk * 16); },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) { load_b_nmajor<T, kS>(b0, b1, dO, np * 16, kk * 16); });
    for (int nt = 0; nt < kBq / 8; ++nt)
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + e % 2;  // query in the tile
        const int64_t query = (int64_t)j * kBq + c, key = k0 + warp * 16 + g + 8 * (e / 2);
        const bool keep = query < L && key < S && (!kCausal || key <= query) && tlse[c] != -INFINITY;
        p[nt][e] = keep ? exp2f(p[nt][e] * scale_log2 - tlse[c]) : 0.f;
        ds[nt][e] = p[nt][e] * (ds[nt][e] - tdelta[c]);
      }
    // dV += Pᵀ dO, dK += dSᵀ Q (scaled at the end)
    gemm<T, kBq / 16, D / 8>(
        dvacc, [&](uint32_t(&a)[4], int kk) { a_from_acc<T>(a, p, kk); },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) { load_b_kmajor<T, kS>(b0, b1, dO, kk * 16, np * 16); });
    gemm<T, kBq / 16, D / 8>(
        dkacc, [&](uint32_t(&a)[4], int kk) { a_from_acc<T>(a, ds, kk); },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) { load_b_kmajor<T, kS>(b0, b1, Q, kk * 16, np * 16); });
    // dSᵀ to shared memory, then dQ_tile (kBq x D) += dS (kBq x 64 keys) K: warp w
    // takes query rows 16·(w % kM) and 4/kM of the D columns.
    for (int nt = 0; nt < kBq / 8; ++nt)
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint32_t*>(sds + (warp * 16 + g + 8 * h) * kDs + nt * 8 + 2 * t) =
            pack<T>(ds[nt][2 * h], ds[nt][2 * h + 1]);
    __syncthreads();
    constexpr int kM = kBq / 16, kNq = D * kM / 32;  // kNq n-tiles of 8 columns per warp
    static_assert(kNq % 2 == 0 && kNq * 8 * 4 == D * kM, "dQ split: 4 warps, n-tiles in pairs");
    const int mt = warp % kM, n0 = (warp / kM) * kNq * 8;
    float dq[kNq][4] = {};
    gemm<T, kRows / 16, kNq>(
        dq,
        [&](uint32_t(&a)[4], int kk) {  // dS rows from dSᵀ: quadrant (rows 8·(i%2), cols 8·(i/2)) by .trans
          const int i = lane / 8;
          tc::ldmatrix_x4_trans(a, sds + (kk * 16 + lane % 8 + 8 * (i / 2)) * kDs + mt * 16 + 8 * (i % 2));
        },
        [&](uint32_t(&b0)[2], uint32_t(&b1)[2], int kk, int np) {
          load_b_kmajor<T, kS>(b0, b1, sk, kk * 16, n0 + np * 16);
        });
    for (int nt = 0; nt < kNq && n0 + nt * 8 < d; ++nt)
      for (int e = 0; e < 4; ++e) {
        const int64_t query = (int64_t)j * kBq + mt * 16 + g + 8 * (e / 2);
        if (query < L) atomicAdd(dq_accum + query * d + n0 + nt * 8 + 2 * t + e % 2, dq[nt][e] * scale);
      }
    __syncthreads();  // the next prefetch and dSᵀ overwrite what this tile read
  }
  tc::cp_async_wait<0>();  // K/V copies when no query tile ran (causal, keys past L)

  for (int h = 0; h < 2; ++h) {
    const int64_t key = k0 + warp * 16 + g + 8 * h;
    if (key >= S) continue;
    uint32_t* krow = reinterpret_cast<uint32_t*>(dk + (b * S + key) * d);
    uint32_t* vrow = reinterpret_cast<uint32_t*>(dv + (b * S + key) * d);
    for (int dn = 0; dn < D / 8 && dn * 8 < d; ++dn) {
      krow[dn * 4 + t] = pack<T>(dkacc[dn][2 * h] * scale, dkacc[dn][2 * h + 1] * scale);
      vrow[dn * 4 + t] = pack<T>(dvacc[dn][2 * h], dvacc[dn][2 * h + 1]);
    }
  }
}

template <class T>
__global__ void attn_tc_dq_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dq[i] = from_float<T>(acc[i]);
}

template <int D>
constexpr size_t kForwardSmem = (size_t)(kRows + 4 * kKeys) * kStride<D> * 2;
template <int D>
constexpr size_t kBackwardSmem = (size_t)(2 * kRows + 4 * kBwdQueries<D>) * kStride<D> * 2 +
                                 (size_t)kRows * (kBwdQueries<D> + 8) * 2 + 4 * kBwdQueries<D> * sizeof(float);

// f(T{}, D constant, causal constant) for the runtime choices: D the smallest
// instance >= the head dim d (the binding checks d, attention_tc_head_dim).
template <class F>
void dispatch(Storage s, int d, bool causal, F&& f) {
  with_storage(s, [&](auto tv) {
    using T = decltype(tv);
    if constexpr (!std::is_same_v<T, float>) {
      with_bools(
          [&](auto c) {
            if (d <= 16)
              f(tv, std::integral_constant<int, 16>{}, c);
            else if (d <= 32)
              f(tv, std::integral_constant<int, 32>{}, c);
            else if (d <= 64)
              f(tv, std::integral_constant<int, 64>{}, c);
            else
              f(tv, std::integral_constant<int, 128>{}, c);
          },
          causal);
    }
  });
}

}  // namespace

void attention_tc_forward(Storage s, const void* q, const void* k, const void* v, void* out, float* lse, int64_t B,
                          int64_t L, int64_t S, int d, bool causal, float scale, cudaStream_t stream) {
  dispatch(s, d, causal, [&](auto tv, auto dc, auto cc) {
    using T = decltype(tv);
    constexpr int kD = decltype(dc)::value;
    constexpr bool kC = decltype(cc)::value;
    cudaFuncSetAttribute(attn_tc_forward_kernel<T, kD, kC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         (int)kForwardSmem<kD>);
    const dim3 grid = checked_grid("attention_tc_forward", (L + kRows - 1) / kRows, B);
    attn_tc_forward_kernel<T, kD, kC><<<grid, kTcThreads, kForwardSmem<kD>, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                         static_cast<const T*>(v), static_cast<T*>(out), lse, L,
                                                         S, d, scale * kLog2e);
  });
}

void attention_tc_backward(Storage s, const void* q, const void* k, const void* v, const void* out,
                           const void* dout, const float* lse, void* dq, void* dk, void* dv, float* delta,
                           float* dq_accum, int64_t B, int64_t L, int64_t S, int d, bool causal, float scale,
                           cudaStream_t stream) {
  dispatch(s, d, causal, [&](auto tv, auto dc, auto cc) {
    using T = decltype(tv);
    constexpr int kD = decltype(dc)::value;
    const int64_t rows = B * L;
    attn_tc_delta_kernel<T><<<checked_grid("attention_tc_delta", (rows + 3) / 4), kTcThreads, 0, stream>>>(
        static_cast<const T*>(out), static_cast<const T*>(dout), delta, dq_accum, rows, d);
    constexpr bool kC = decltype(cc)::value;
    cudaFuncSetAttribute(attn_tc_backward_kernel<T, kD, kC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         (int)kBackwardSmem<kD>);
    const dim3 grid = checked_grid("attention_tc_backward", (S + kRows - 1) / kRows, B);
    attn_tc_backward_kernel<T, kD, kC><<<grid, kTcThreads, kBackwardSmem<kD>, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout),
        lse, delta, static_cast<T*>(dk), static_cast<T*>(dv), dq_accum, L, S, d, scale);
    attn_tc_dq_kernel<T><<<grid_for(rows * d), kThreads, 0, stream>>>(dq_accum, static_cast<T*>(dq), rows * d);
  });
}

}  // namespace gpunet
