// rows.h -- the shape limits of the row kernels (common/rows.cuh) that the
// bindings check; plain C++, so host code compiled without nvcc includes it.
#pragma once
#include <climits>
#include <cstdint>

namespace gpunet {

constexpr int kWarpRows = 4;  // rows (one per warp) per block in the warp-per-row kernels

// The warp-per-row kernels launch a block per kWarpRows rows, and a grid has
// at most 2^31 - 1 blocks in x: more rows than this cannot be launched.
constexpr int64_t kMaxRows = kWarpRows * (int64_t)INT_MAX;

}  // namespace gpunet
