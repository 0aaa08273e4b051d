// mma.cuh -- warp-level tensor-core primitives (sm_80+): mma.sync m16n8k16
// with fp32 accumulators, ldmatrix and cp.async. On the GPU each is its PTX
// instruction; in the simulator (CUDASIM) a warp collective of
// csrc/sim/tensorcore.h with the same register layouts.
//
// Register layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), for lane
// i of the warp, g = i / 4 (group), t = i % 4 (thread in group); a uint32_t
// holds two 16-bit elements, the lower-numbered column (A) / row (B) in its
// low half:
//   A (16x16, row-major), a[4]:  a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                                a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (16x8, "col"), b[2]:       b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   C/D (16x8, fp32), d[4]:      d[0] = D[g][2t]  d[1] = D[g][2t+1]  d[2] = D[g+8][2t]  d[3] = D[g+8][2t+1]
// ldmatrix .m8n8 .b16: lanes 8j..8j+7 give the addresses of the 8 rows (16
// bytes each, 16-byte aligned, in shared memory) of matrix j; r[j] of lane i
// then holds row g, columns 2t and 2t+1 of matrix j (with _trans: column g,
// rows 2t and 2t+1, i.e. the same of the transposed matrix). So x4 on the
// four 8x8 quadrants of a row-major 16x16 tile (matrix 0: rows 0-7 cols 0-7,
// 1: rows 8-15 cols 0-7, 2: rows 0-7 cols 8-15, 3: rows 8-15 cols 8-15) is
// exactly the A fragment, and x2 (or x4 for two n-tiles) on an n-major
// ("col") B tile is the B fragment; _trans gives B from a k-major tile.
//
// Numerics: products of two fp16/bf16 values are exact in fp32 and the sums
// are fp32. The simulator adds the 16 products to d in k order, one rounding
// per add; a GPU's tensor core uses its own order and internal precision, so
// results differ from the simulator's in the last bits (compare with a
// tolerance scaled by the number of terms).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "common/mma.cuh needs sm_80 or newer (mma.sync m16n8k16 on bf16, ldmatrix, cp.async)"
#endif

namespace gpunet {
namespace tc {

#if !defined(CUDASIM)
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// d += A·B on the tensor cores; T = __half or __nv_bfloat16.
template <class T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: fp16 or bf16");
#if defined(CUDASIM)
  ::cudasim::tc::mma_m16n8k16(d, a, b, [](uint16_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof v);
    return static_cast<float>(v);
  });
#elif defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: r[j] from matrix j,
// whose row addresses lanes 8j..8j+7 pass (each lane passes its own row).
#if defined(CUDASIM)
#define GPUNET_LDMATRIX(N, TRANS, SUFFIX) ::cudasim::tc::ldmatrix<N>(r, smem_row, TRANS)
#elif defined(__CUDA_ARCH__)
#define GPUNET_LDMATRIX_ASM_1(SUFFIX) \
  asm volatile("ldmatrix.sync.aligned.m8n8.x1" SUFFIX ".shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(smem_row)))
#define GPUNET_LDMATRIX_ASM_2(SUFFIX)                                                        \
  asm volatile("ldmatrix.sync.aligned.m8n8.x2" SUFFIX ".shared.b16 {%0,%1}, [%2];\n"         \
               : "=r"(r[0]), "=r"(r[1])                                                      \
               : "r"(smem_addr(smem_row)))
#define GPUNET_LDMATRIX_ASM_4(SUFFIX)                                                        \
  asm volatile("ldmatrix.sync.aligned.m8n8.x4" SUFFIX ".shared.b16 {%0,%1,%2,%3}, [%4];\n"   \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                              \
               : "r"(smem_addr(smem_row)))
#define GPUNET_LDMATRIX(N, TRANS, SUFFIX) GPUNET_LDMATRIX_ASM_##N(SUFFIX)
#else
#define GPUNET_LDMATRIX(N, TRANS, SUFFIX) (void)r, (void)smem_row
#endif
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row) { GPUNET_LDMATRIX(1, false, ""); }
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) { GPUNET_LDMATRIX(2, false, ""); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) { GPUNET_LDMATRIX(4, false, ""); }
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row) {
  GPUNET_LDMATRIX(1, true, ".trans");
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
  GPUNET_LDMATRIX(2, true, ".trans");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  GPUNET_LDMATRIX(4, true, ".trans");
}
#undef GPUNET_LDMATRIX
#undef GPUNET_LDMATRIX_ASM_1
#undef GPUNET_LDMATRIX_ASM_2
#undef GPUNET_LDMATRIX_ASM_4

// cp.async.cg.shared.global: 16 bytes global -> shared, asynchronously
// (bypassing L1); !full writes 16 zero bytes and reads nothing (src-size 0),
// for rows past the end. Both addresses 16-byte aligned. The copy is complete
// only after a cp_async_wait<N>() that covers its commit group, and visible to
// the other threads of the block only after a barrier following that wait.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool full = true) {
#if defined(CUDASIM)
  ::cudasim::tc::cp_async_16(smem, gmem, full);
#elif defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(full ? 16 : 0)
               : "memory");
#endif
}

// Closes the group of the copies this thread issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#if defined(CUDASIM)
  ::cudasim::tc::cp_async_commit();
#elif defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait<N>: N >= 0");
#if defined(CUDASIM)
  ::cudasim::tc::cp_async_wait(N);
#elif defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace tc
}  // namespace gpunet
