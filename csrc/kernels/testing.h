// testing.h -- host API of csrc/kernels/testing.cu. TEST-ONLY: these kernels
// and hooks exist for the tests and are not used by gpunet itself.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

// One block sums x[0..n) into out[0]. racy = true: the same kernel with one
// __syncthreads() missing.
void block_sum(const float* x, float* out, int64_t n, bool racy, cudaStream_t stream);

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
