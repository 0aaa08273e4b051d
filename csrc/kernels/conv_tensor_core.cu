// conv_tensor_core.cu -- 2-D convolution of float16 / bfloat16 (NCHW) as implicit GEMMs
// on tensor cores: forward, input gradient (dgrad), weight gradient (wgrad).
//
// Each pass is, per group g, one GEMM C (M, N) = A (M, K) . B (K, N)^T-stored
// (both operands kept "K-contiguous" in shared memory) whose operands are
// gathered from the NCHW arrays on the fly: no column matrix in global memory.
// Cg = C/groups, Og = O/groups, S = OH*OW, kk = kh*kw.
//
//   pass   M              N              K              A[m, k]                  B[n, k]
//   fwd    (img, oy, ox)  o in group     (c, i, j)      x at the window tap      w[o, c, i, j]
//   dgrad  (img, y, x)    c in group     (o, i, j)      dy where (y+ph-i*dh)/sh  w[o, c, i, j]
//                                                       and (x+pw-j*dw)/sw are whole and inside
//   wgrad  o in group     (c, i, j)      (img, oy, ox)  dy[img, o, oy, ox]       x at the window tap
//
// dgrad takes the stride with predicates: a tap whose source is not a whole
// output pixel reads 0 (for stride s, (s^2 - 1)/s^2 of its products are zero
// work; the stride decomposition into s^2 sub-convolutions would skip them).
//
// Algorithm: a block of 128 threads (4 warps, 2 x 2) owns a 64 x 64 tile of C
// and walks K in steps of 32. Each thread fills one row of the A and of the B
// tile with two runs of 8 consecutive k: a gathered run is loaded element by
// element into registers (each element a 16-bit load, zero in the padding or
// past the edges) and stored to shared memory as one 16-byte store after the
// current tile's products (register prefetch: the loads of tile t+1 are in
// flight while tile t multiplies); a run that is 8 contiguous, 16-byte aligned
// elements in global memory (the forward's weights when Cg*kk % 8 == 0,
// wgrad's dy when S % 8 == 0) goes straight to shared memory with cp.async,
// zero-filled past the edges. Two shared stages: the loads of tile t+1 fill
// the stage tile t does not read. Each warp computes a 32 x 32 sub-tile: per
// 16-wide k step it loads 2 A fragments and 2 pairs of B fragments with
// ldmatrix.x4 and issues 8 mma.m16n8k16 (fp32 accumulators, 32 per thread).
// Epilogue: the forward adds the bias in fp32; every C entry is rounded once
// to the storage type and stored to its NCHW place (16-bit stores).
//
// Shared memory: rows of 32 k values padded to 40 (80 bytes): the 8 rows one
// 8-lane phase of ldmatrix or of the 16-byte stores touches start 80 bytes
// apart, i.e. on banks 0, 20, 8, 28, 16, 4, 24, 12 (mod 32), four words each:
// all 32 banks once, no conflicts. 2 stages x (64 + 64) rows x 80 bytes = 20 KiB.
//
// Traffic and work: 2*M*N*K flops per group on tensor cores; A is re-read
// once per 64 columns of C and B once per 64 rows (from L1/L2). The gathers
// are 2-byte loads: coalesced along ow for the image operand of the forward
// (stride 1), scattered for dgrad's and wgrad's image operands.
//
// wgrad reduces over all of K = n*OH*OW inside one block (no split-K): its
// grid has only ceil(Og/64) x ceil(Cg*kk/64) x groups blocks, which can leave
// a large GPU idle for layers with few channels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/launch.cuh"
#include "common/mma.cuh"
#include "common/reduce.cuh"
#include "common/storage.cuh"
#include "kernels/conv_tensor_core.h"

namespace gpunet {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kPitch = kBK + 8;  // shared row pitch in 16-bit values (80 bytes; see the header comment)
constexpr int kTcThreads = 128;
constexpr int kRuns = kBM * kBK / 8 / kTcThreads;  // runs of 8 k each thread fills per operand tile
static_assert(kBM == kBN && kTcThreads % kBM == 0 && kRuns * kTcThreads / kBM == kBK / 8,
              "each thread owns one row of each tile");

enum class Pass { Fwd, Dgrad, Wgrad };

// k = (a*B + b)*C + c, advanced one k at a time.
struct Split3 {
  int a, b, c;
};
__device__ __forceinline__ Split3 split3(int k, int B, int C) {
  const int t = k / C;
  return {t / B, t % B, k % C};
}
__device__ __forceinline__ void step3(Split3& s, int B, int C) {
  if (++s.c == C) {
    s.c = 0;
    if (++s.b == B) {
      s.b = 0;
      ++s.a;
    }
  }
}

// How one operand's elements are found. Row r (of A's M or B's N) splits as
// (ra, rb, rc) over (row_b, row_c); its base offset is g*gstride + ra*row_sa,
// and for a window operand its origin is (rb*row_sb + yoff, rc*row_sc + xoff).
// Its k splits as (a, b, c) over (kb, kc). A linear operand reads
// p[base + a*sa + b*sb + c*sc]; a window operand reads the plane
// p[base + a*sa] (ylim x xlim) at ((y0 + b*ystep)/sy, (x0 + c*xstep)/sx),
// 0 where a coordinate is negative, not whole or past its limit.
struct Operand {
  const uint16_t* p;
  int64_t gstride, row_sa, sa;
  int row_b, row_c, row_sb, row_sc, yoff, xoff;
  int kb, kc, sb, sc;
  int ystep, xstep, sy, sx, ylim, xlim;
  int rows;
  bool vec;  // each run of 8 k is 8 contiguous 16-byte-aligned elements (and K % 8 == 0)
};

// Where C (M x N) goes: entry (m, n) with m = (mi, mr) over (.., out_rows) at
// g*out_g + mi*out_si + mr*out_sr + n*out_sn.
struct Epilogue {
  void* p;
  const void* bias;  // forward only; may be null
  int64_t out_g, out_si;
  int out_rows, out_sr, out_sn;
};

struct Params {
  Operand a, b;
  Epilogue out;
  int M, N, K;
};

// The fixed part of a thread's row of an operand tile.
struct Row {
  int64_t base;
  int y0, x0;
  bool valid;
};

__device__ __forceinline__ Row row_of(const Operand& op, int g, int r) {
  const Split3 s = split3(r, op.row_b, op.row_c);
  return {g * op.gstride + s.a * op.row_sa, s.b * op.row_sb + op.yoff, s.c * op.row_sc + op.xoff, r < op.rows};
}

// Element k = s of the row (16-bit bits), 0 outside the window.
template <bool kWindow>
__device__ __forceinline__ uint16_t element(const Operand& op, const Row& row, const Split3& s) {
  if constexpr (!kWindow) {
    return op.p[row.base + s.a * op.sa + (int64_t)s.b * op.sb + (int64_t)s.c * op.sc];
  } else {
    int ty = row.y0 + s.b * op.ystep, tx = row.x0 + s.c * op.xstep;
    if (op.sy != 1) {
      if (ty < 0 || ty % op.sy) return 0;
      ty /= op.sy;
    }
    if (op.sx != 1) {
      if (tx < 0 || tx % op.sx) return 0;
      tx /= op.sx;
    }
    if ((unsigned)ty >= (unsigned)op.ylim || (unsigned)tx >= (unsigned)op.xlim) return 0;
    return op.p[row.base + s.a * op.sa + (int64_t)ty * op.xlim + tx];
  }
}

// Elements k0 .. k0+7 of the row, packed little-endian (zero past K or the rows).
template <bool kWindow>
__device__ __forceinline__ uint4 gather_run(const Operand& op, const Row& row, int k0, int K) {
  uint32_t w[4] = {0, 0, 0, 0};
  if (row.valid && k0 < K) {
    Split3 s = split3(k0, op.kb, op.kc);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (k0 + e < K) w[e / 2] |= (uint32_t)element<kWindow>(op, row, s) << (16 * (e % 2));
      step3(s, op.kb, op.kc);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

using Tile = uint4[kBM][kPitch / 8];  // 16-byte units: 8 values of k each
// One shared stage: the A and the B tile (rows 16-byte aligned: 16-byte stores, ldmatrix).
struct alignas(16) Stage {
  Tile a, b;
};

// One operand's share of loading tile k0 into `tile`: cp.async runs go
// straight to shared memory; gathered runs land in `regs` (stored by store_runs).
template <bool kWindow>
__device__ __forceinline__ void load_runs(const Operand& op, const Row& row, int rrow, int k0, int K, Tile& tile,
                                          uint4 (&regs)[kRuns]) {
#pragma unroll
  for (int q = 0; q < kRuns; ++q) {
    const int run = (int)threadIdx.x / kBM + q * (kTcThreads / kBM);
    const int k = k0 + 8 * run;
    if (!kWindow && op.vec) {
      const bool full = row.valid && k < K;
      const uint16_t* src = op.p;  // not read when !full
      if (full) {
        const Split3 s = split3(k, op.kb, op.kc);
        src += row.base + s.a * op.sa + (int64_t)s.b * op.sb + (int64_t)s.c * op.sc;
      }
      tc::cp_async_16(&tile[rrow][run], src, full);
    } else {
      regs[q] = gather_run<kWindow>(op, row, k, K);
    }
  }
}

template <bool kWindow>
__device__ __forceinline__ void store_runs(const Operand& op, int rrow, Tile& tile, const uint4 (&regs)[kRuns]) {
  if (!kWindow && op.vec) return;
#pragma unroll
  for (int q = 0; q < kRuns; ++q) {
    const int run = (int)threadIdx.x / kBM + q * (kTcThreads / kBM);
    tile[rrow][run] = regs[q];
  }
}

// The warp's 32 x 32 products of one shared stage (kBK deep).
template <class T>
__device__ __forceinline__ void multiply(const Tile& as, const Tile& bs, int wm, int wn, float (&acc)[2][4][4]) {
  const int lane = (int)threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += 16) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) tc::ldmatrix_x4(a[mi], &as[wm * 32 + mi * 16 + lane % 16][kk / 8 + lane / 16]);
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      uint32_t r[4];
      tc::ldmatrix_x4(r, &bs[wn * 32 + p * 16 + lane % 8 + 8 * (lane / 16)][kk / 8 + lane / 8 % 2]);
      b[2 * p][0] = r[0];
      b[2 * p][1] = r[1];
      b[2 * p + 1][0] = r[2];
      b[2 * p + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) tc::mma_m16n8k16<T>(acc[mi][nj], a[mi], b[nj]);
  }
}

template <class T, Pass P>
__global__ void __launch_bounds__(kTcThreads) conv_tc_kernel(Params prm) {
  constexpr bool kWindowA = P != Pass::Wgrad;  // A gathers from an image (x or dy) for fwd and dgrad
  constexpr bool kWindowB = P == Pass::Wgrad;  // B gathers from x for wgrad
  __shared__ Stage stage[2];

  const int g = blockIdx.z, m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  const int rrow = (int)threadIdx.x % kBM;  // this thread's row of both tiles
  const Row arow = row_of(prm.a, g, m0 + rrow), brow = row_of(prm.b, g, n0 + rrow);
  const int warp = (int)threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  float acc[2][4][4] = {};
  uint4 ra[kRuns], rb[kRuns];

  const int tiles = (prm.K + kBK - 1) / kBK;
  load_runs<kWindowA>(prm.a, arow, rrow, 0, prm.K, stage[0].a, ra);
  load_runs<kWindowB>(prm.b, brow, rrow, 0, prm.K, stage[0].b, rb);
  tc::cp_async_commit();
  store_runs<kWindowA>(prm.a, rrow, stage[0].a, ra);
  store_runs<kWindowB>(prm.b, rrow, stage[0].b, rb);
  tc::cp_async_wait<0>();
  __syncthreads();
  for (int t = 0; t < tiles; ++t) {
    const int cur = t & 1;
    const bool next = t + 1 < tiles;
    if (next) {  // tile t+1 into the other stage, last read before the previous barrier
      load_runs<kWindowA>(prm.a, arow, rrow, (t + 1) * kBK, prm.K, stage[cur ^ 1].a, ra);
      load_runs<kWindowB>(prm.b, brow, rrow, (t + 1) * kBK, prm.K, stage[cur ^ 1].b, rb);
      tc::cp_async_commit();
    }
    multiply<T>(stage[cur].a, stage[cur].b, wm, wn, acc);
    if (next) {
      store_runs<kWindowA>(prm.a, rrow, stage[cur ^ 1].a, ra);
      store_runs<kWindowB>(prm.b, rrow, stage[cur ^ 1].b, rb);
      tc::cp_async_wait<0>();
    }
    __syncthreads();
  }

  // Fragment layout of mma.m16n8k16's C: lane (4*gq + tq) holds rows gq and
  // gq + 8, columns 2*tq and 2*tq + 1.
  const Epilogue& ep = prm.out;
  T* out = static_cast<T*>(ep.p);
  const T* bias = static_cast<const T*>(ep.bias);
  const int lane = (int)threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * 32 + mi * 16 + gq + 8 * h;
      if (m >= prm.M) continue;
      const int64_t base =
          g * ep.out_g + (int64_t)(m / ep.out_rows) * ep.out_si + (int64_t)(m % ep.out_rows) * ep.out_sr;
#pragma unroll
      for (int nj = 0; nj < 4; ++nj)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + wn * 32 + nj * 8 + 2 * tq + e;
          if (n >= prm.N) continue;
          float v = acc[mi][nj][2 * h + e];
          if (P == Pass::Fwd && bias) v += to_float(bias[(int64_t)g * prm.N + n]);
          out[base + (int64_t)n * ep.out_sn] = from_float<T>(v);
        }
    }
}

// db[o] = sum over images and pixels of dy[img, o, :], fp32 in a fixed order.
template <class T>
__global__ void __launch_bounds__(kThreads) conv_tc_bias_grad_kernel(const T* __restrict__ dy, T* __restrict__ db,
                                                                     int64_t n, int64_t o, int64_t spatial) {
  const int64_t ch = blockIdx.x;
  float sum = 0.f;
  for (int64_t img = 0; img < n; ++img) {
    const T* plane = dy + (img * o + ch) * spatial;
    for (int64_t s = threadIdx.x; s < spatial; s += kThreads) sum += to_float(plane[s]);
  }
  sum = block_reduce_sum<kThreads>(sum);
  if (threadIdx.x == 0) db[ch] = from_float<T>(sum);
}

// ---------------------------------------------------------------- host side
struct Dims {
  int64_t n, c, h, w, o, oh, ow, groups, cg, og, kk, hw, ohw;
  explicit Dims(const TcConvShape& t)
      : n(t.s.n), c(t.s.c), h(t.s.h), w(t.s.w), o(t.o), oh(t.s.oh), ow(t.s.ow), groups(t.groups),
        cg(t.s.c / t.groups), og(t.o / t.groups), kk((int64_t)t.s.kh * t.s.kw), hw(t.s.h * t.s.w),
        ohw(t.s.oh * t.s.ow) {}
};

// A linear operand: rows r at g*gstride + r*row_sa, k split (a, b, c) over (kb, kc) with strides (sa, sb, sc).
Operand linear(const void* p, int rows, int64_t gstride, int64_t row_sa, int kb, int kc, int64_t sa, int sb, int sc) {
  Operand op{};
  op.p = static_cast<const uint16_t*>(p);
  op.gstride = gstride;
  op.row_sa = row_sa;
  op.row_b = op.row_c = 1;
  op.kb = kb;
  op.kc = kc;
  op.sa = sa;
  op.sb = sb;
  op.sc = sc;
  op.rows = rows;
  return op;
}

// A window operand: rows split (ra, rb, rc) over (row_b, row_c) as described at Operand.
Operand window(const void* p, int rows, int64_t gstride, int64_t row_sa, int row_b, int row_c, int row_sb, int row_sc,
               int yoff, int xoff, int kb, int kc, int64_t sa, int ystep, int xstep, int sy, int sx, int ylim,
               int xlim) {
  Operand op{};
  op.p = static_cast<const uint16_t*>(p);
  op.gstride = gstride;
  op.row_sa = row_sa;
  op.row_b = row_b;
  op.row_c = row_c;
  op.row_sb = row_sb;
  op.row_sc = row_sc;
  op.yoff = yoff;
  op.xoff = xoff;
  op.kb = kb;
  op.kc = kc;
  op.sa = sa;
  op.ystep = ystep;
  op.xstep = xstep;
  op.sy = sy;
  op.sx = sx;
  op.ylim = ylim;
  op.xlim = xlim;
  op.rows = rows;
  return op;
}

template <Pass P>
void launch(Storage st, const Params& prm, int64_t groups, cudaStream_t stream) {
  if (prm.M == 0 || prm.N == 0) return;
  const dim3 grid = checked_grid("conv_tc", (prm.M + kBM - 1) / kBM, (prm.N + kBN - 1) / kBN, groups);
  with_storage(st, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) conv_tc_kernel<T, P><<<grid, kTcThreads, 0, stream>>>(prm);
  });
}

}  // namespace

int64_t conv_tc_max_extent(const TcConvShape& t) {
  const Dims d(t);  // every GEMM extent is at most one of the three arrays' sizes
  return std::max({d.n * d.c * d.hw, d.n * d.o * d.ohw, d.o * d.cg * d.kk});
}

void conv_tc_forward(Storage st, const void* x, const void* w, const void* b, void* y, const TcConvShape& t,
                     cudaStream_t stream) {
  const Dims d(t);
  const ConvShape& s = t.s;
  Params prm{};
  prm.M = (int)(d.n * d.ohw);
  prm.N = (int)d.og;
  prm.K = (int)(d.cg * d.kk);
  prm.a = window(x, prm.M, d.cg * d.hw, d.c * d.hw, (int)d.oh, (int)d.ow, s.sh, s.sw, -s.ph, -s.pw, s.kh, s.kw,
                 d.hw, s.dh, s.dw, 1, 1, (int)d.h, (int)d.w);
  prm.b = linear(w, prm.N, d.og * prm.K, prm.K, 1, prm.K, 0, 0, 1);
  prm.b.vec = prm.K % 8 == 0 && aligned16(w);
  prm.out = Epilogue{y, b, d.og * d.ohw, d.o * d.ohw, (int)d.ohw, 1, (int)d.ohw};
  launch<Pass::Fwd>(st, prm, d.groups, stream);
}

void conv_tc_dgrad(Storage st, const void* dy, const void* w, void* dx, const TcConvShape& t, cudaStream_t stream) {
  const Dims d(t);
  const ConvShape& s = t.s;
  Params prm{};
  prm.M = (int)(d.n * d.hw);
  prm.N = (int)d.cg;
  prm.K = (int)(d.og * d.kk);
  const int64_t wrow = d.cg * d.kk;  // one output channel's weights
  prm.a = window(dy, prm.M, d.og * d.ohw, d.o * d.ohw, (int)d.h, (int)d.w, 1, 1, s.ph, s.pw, s.kh, s.kw, d.ohw,
                 -s.dh, -s.dw, s.sh, s.sw, (int)d.oh, (int)d.ow);
  prm.b = linear(w, prm.N, d.og * wrow, d.kk, s.kh, s.kw, wrow, s.kw, 1);
  prm.out = Epilogue{dx, nullptr, d.cg * d.hw, d.c * d.hw, (int)d.hw, 1, (int)d.hw};
  launch<Pass::Dgrad>(st, prm, d.groups, stream);
}

void conv_tc_wgrad(Storage st, const void* x, const void* dy, void* dw, const TcConvShape& t, cudaStream_t stream) {
  const Dims d(t);
  const ConvShape& s = t.s;
  Params prm{};
  prm.M = (int)d.og;
  prm.N = (int)(d.cg * d.kk);
  prm.K = (int)(d.n * d.ohw);
  prm.a = linear(dy, prm.M, d.og * d.ohw, d.ohw, 1, (int)d.ohw, d.o * d.ohw, 0, 1);
  prm.a.vec = d.ohw % 8 == 0 && aligned16(dy);
  prm.b = window(x, prm.N, d.cg * d.hw, d.hw, s.kh, s.kw, s.dh, s.dw, -s.ph, -s.pw, (int)d.oh, (int)d.ow,
                 d.c * d.hw, s.sh, s.sw, 1, 1, (int)d.h, (int)d.w);
  prm.out = Epilogue{dw, nullptr, d.og * prm.N, 0, prm.M, prm.N, 1};
  launch<Pass::Wgrad>(st, prm, d.groups, stream);
}

void conv_tc_bias_grad(Storage st, const void* dy, void* db, const TcConvShape& t, cudaStream_t stream) {
  const Dims d(t);
  if (d.o == 0) return;
  with_storage(st, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>)
      conv_tc_bias_grad_kernel<T><<<checked_grid("conv_tc_bias_grad", d.o), kThreads, 0, stream>>>(
          static_cast<const T*>(dy), static_cast<T*>(db), d.n, d.o, d.ohw);
  });
}

}  // namespace gpunet
