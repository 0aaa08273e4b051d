// testing.h -- host API of csrc/kernels/testing.cu. TEST-ONLY: these kernels
// and hooks exist for the tests and are not used by gpunet itself.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// One block sums x[0..n) into out[0]. racy = true: the same kernel with one
// __syncthreads() missing.
void block_sum(const float* x, float* out, int64_t n, bool racy, cudaStream_t stream);

// Tensor-core primitives (common/mma.cuh), one warp each:
// out[l][j] = register j of lane l after ldmatrix x{num}[.trans] on the 32
// rows of 8 16-bit values in src, lane l naming row rows[l] (num in 1, 2, 4).
void tc_ldmatrix(const uint16_t* src, const int* rows, uint32_t* out, int num, bool trans, cudaStream_t stream);
// d = a·b + c through mma_m16n8k16 (a 16x16 row-major; b 16x8 k-major, or
// its transpose 8x16 for LdmatrixNMajor), fragments built as `mode` says.
enum class TcMma { Direct, LdmatrixNMajor, LdmatrixTrans };
void tc_mma(Storage s, const uint16_t* a, const uint16_t* b, const float* c, float* d, TcMma mode,
            cudaStream_t stream);
// Three cp.async copies per thread of one warp and four snapshots of their
// destinations (see testing.cu): src (3, 32, 4), out (4, 3, 32, 4) float32.
void tc_cp_async(const float* src, float* out, bool racy, cudaStream_t stream);

// Launches a kernel with 2048 threads per block (the limit is 1024), so that
// the launch-error path can be tested on any machine.
void invalid_launch(cudaStream_t stream);

// The launch shapes of the kernel families (common/launch.cuh,
// common/elementwise.cuh, common/rows.cuh), and checked_grid's limit on
// each grid dimension (GridX/Y/Z: n blocks in that dimension).
enum class Geometry { GridStride, Elementwise, ElementwiseVec4, WarpRows, BlockRows, GridX, GridY, GridZ };

// The blocks a launcher of that shape asks for `n` items (elements or rows),
// by the launchers' own functions: tests/test_launch.py checks them past 2^31
// items, which no test can allocate.
int64_t launch_blocks(Geometry g, int64_t n);

}  // namespace gpunet
