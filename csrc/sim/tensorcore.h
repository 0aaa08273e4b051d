// tensorcore.h -- the simulator's ldmatrix, mma.sync.m16n8k16 and cp.async
// (included at the end of cudasim.h; kernels use them through
// csrc/common/mma.cuh, whose GPU branch is the PTX itself).
//
// ldmatrix and mma are warp collectives on the lanes' registers: every lane
// of the warp must call them (mask 0xffffffff, as .sync.aligned requires).
// Each exchange is a warp rendezvous of kind kTensor that moves 64 bits per
// lane, so a fragment of 128 bits takes two. They do not order memory for the
// race checker (a GPU's ldmatrix/mma do not either): a lane's shared-memory
// writes that another lane's ldmatrix reads still need a barrier.
//
// ldmatrix: each lane that names a row (lanes 0-7 for .x1, 0-15 for .x2, all
// for .x4) reads its 16 bytes as one 16-byte shared load (so the race
// checker and the access profile see what the GPU does: one row per lane,
// eight rows per phase), then the rows are dealt out in the PTX ISA's
// fragment layout (see csrc/common/mma.cuh).
//
// cp.async: the copy is queued on the issuing thread and lands when a
// cp.async.wait_group covering its commit group runs, copying the 16 bytes
// there (global load and shared store by that thread at the wait): a kernel
// that reads the destination before its wait sees the old bytes, and the race
// checker sees the write at the wait.
#pragma once

namespace cudasim {
namespace tc {

// 16 bytes moved whole: one 16-byte access for the race checker and profile.
struct alignas(16) Chunk16 {
  uint32_t w[4];
};

// Rendezvous of the whole warp depositing `bits`; out[l] = lane l's deposit.
inline void warp_gather(uint64_t bits, uint64_t (&out)[32]) {
  using namespace detail;
  unsigned part;
  const unsigned p = warp_rendezvous(0xffffffffu, kTensor, bits, CUDASIM_SITE(), &part);
  if (part != 0xffffffffu) fail("ldmatrix/mma need all 32 lanes of the warp (" + where() + ")");
  const WarpSync& w = cur_blk->warps[cur->warp];
  for (int l = 0; l < 32; ++l) out[l] = w.val[p][l];
}

// The 16-byte rows of all lanes: rows[l] = what lane l read (zeros for lanes
// that name no row).
inline void gather_rows(const void* row, bool names_row, Chunk16 (&rows)[32]) {
  Chunk16 mine{};
  if (names_row) {
    if (((uintptr_t)row & 15) != 0) detail::fail("ldmatrix: a row address is not 16-byte aligned (" + detail::where() + ")");
    mine = *static_cast<const Chunk16*>(row);
  }
  uint64_t lo[32], hi[32];
  warp_gather((uint64_t)mine.w[0] | (uint64_t)mine.w[1] << 32, lo);
  warp_gather((uint64_t)mine.w[2] | (uint64_t)mine.w[3] << 32, hi);
  for (int l = 0; l < 32; ++l) rows[l] = Chunk16{{(uint32_t)lo[l], (uint32_t)(lo[l] >> 32), (uint32_t)hi[l], (uint32_t)(hi[l] >> 32)}};
}

inline uint16_t half_of(const Chunk16& row, int col) { return (uint16_t)(row.w[col / 2] >> (16 * (col % 2))); }

// ldmatrix.sync.aligned.m8n8.x{N}[.trans].shared.b16: r[j] of lane i holds
// two 16-bit elements of matrix j (rows named by lanes 8j..8j+7):
//   plain: row i/4, columns 2(i%4) and 2(i%4)+1;
//   trans: column i/4 of rows 2(i%4) and 2(i%4)+1 (the transposed matrix).
template <int N>
inline void ldmatrix(uint32_t* r, const void* row, bool trans) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix: x1, x2 or x4");
  const int lane = (int)detail::cur->lane;
  Chunk16 rows[32];
  gather_rows(row, lane < 8 * N, rows);
  const int g = lane / 4, t = lane % 4;
  for (int j = 0; j < N; ++j) {
    if (!trans) {
      r[j] = rows[8 * j + g].w[t];
    } else {
      r[j] = (uint32_t)half_of(rows[8 * j + 2 * t], g) | (uint32_t)half_of(rows[8 * j + 2 * t + 1], g) << 16;
    }
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, d += A·B
// (layouts in csrc/common/mma.cuh). Each product of two 16-bit values is
// exact in float32; the 16 products are added to d in k order in float32.
// A GPU's tensor core adds them in its own order and internal precision, so
// results may differ from a GPU's in the last bits.
inline void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, float (*to_float)(uint16_t)) {
  uint64_t alo[32] = {}, ahi[32] = {}, bb[32] = {};  // (zeroed: GCC cannot see warp_gather fill them)
  warp_gather((uint64_t)a[0] | (uint64_t)a[1] << 32, alo);
  warp_gather((uint64_t)a[2] | (uint64_t)a[3] << 32, ahi);
  warp_gather((uint64_t)b[0] | (uint64_t)b[1] << 32, bb);
  // A(r, k): lane (r%8)·4 + (k%8)/2, register (r >= 8) + 2·(k >= 8), half k%2
  auto A = [&](int r, int k) {
    const uint64_t v = (k >= 8 ? ahi : alo)[(r % 8) * 4 + (k % 8) / 2];
    return to_float((uint16_t)(v >> (32 * (r >= 8) + 16 * (k % 2))));
  };
  // B(k, n): lane n·4 + (k%8)/2, register (k >= 8), half k%2
  auto B = [&](int k, int n) { return to_float((uint16_t)(bb[n * 4 + (k % 8) / 2] >> (32 * (k >= 8) + 16 * (k % 2)))); };
  const int lane = (int)detail::cur->lane, g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {  // d[e]: row g + 8·(e/2), column 2t + e%2
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    float acc = d[e];
    for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);
    d[e] = acc;
  }
}

// cp.async.cg.shared.global [dst], [src], 16, full ? 16 : 0
inline void cp_async_16(void* dst, const void* src, bool full) {
  detail::Fiber* f = detail::cur;
  if ((((uintptr_t)dst | (uintptr_t)src) & 15) != 0)
    detail::fail("cp.async: addresses must be 16-byte aligned (" + detail::where() + ")");
  f->cp_async.push_back({dst, src, full, f->cp_groups});
}

inline void cp_async_commit() { ++detail::cur->cp_groups; }

// cp.async.wait_group n: lands every copy of the committed groups but the n
// newest (copies not yet committed stay pending), in issue order.
inline void cp_async_wait(unsigned n) {
  detail::Fiber* f = detail::cur;
  const unsigned upto = f->cp_groups > n ? f->cp_groups - n : 0;  // groups < upto land
  size_t kept = 0;
  for (size_t i = 0; i < f->cp_async.size(); ++i) {
    const detail::AsyncCopy c = f->cp_async[i];
    if (c.group >= upto) {
      f->cp_async[kept++] = c;
      continue;
    }
    Chunk16 v{};
    if (c.full) v = *static_cast<const Chunk16*>(c.src);
    *static_cast<Chunk16*>(c.dst) = v;
  }
  f->cp_async.resize(kept);
}

}  // namespace tc
}  // namespace cudasim
