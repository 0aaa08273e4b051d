// launch.cuh -- host-side launch helpers shared by the kernel families.
//
// Included by csrc/kernels/*.cu only (host code of the .cu files), so it
// compiles both under nvcc and under the CPU runtime (csrc/sim/cudasim.h).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace gpunet {

// Threads per block of the 1-D (grid-stride) kernels: a multiple of the warp
// size that keeps 8 blocks resident per SM on sm_80/sm_90.
constexpr int kThreads = 256;

// Grid-stride kernels never need more blocks than fill the GPU once: an H100
// holds 132 SMs x 2048 threads = 1056 blocks of 256. More blocks only add
// scheduling work (and, in the simulator, fibers).
constexpr int64_t kMaxBlocks = 1024;

// Blocks for `work` independent items, one item per thread per iteration.
inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return (unsigned)std::clamp<int64_t>(blocks, 1, kMaxBlocks);
}

// float4 loads/stores need 16-byte aligned addresses. NumPy/CuPy allocations
// are aligned, but a view such as x[1:] is not.
inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// f(Index{}) with Index = int32_t when every flat index a kernel forms fits
// (32-bit division and modulo are several times cheaper on the GPU), else
// int64_t: kernels templated on their index type are launched as
//   with_index_type(fits, [&](auto i) { using Index = decltype(i); k<Index><<<...>>>(..., (Index)n); });
template <class F>
void with_index_type(bool fits_int32, F&& f) {
  if (fits_int32)
    f(int32_t{});
  else
    f(int64_t{});
}

// Runtime bools as template parameters: with_bools(f, a, b) calls
// f(std::bool_constant<a>{}, std::bool_constant<b>{}), so a kernel templated
// on its flags is instantiated for each combination and launched with the
// one asked for:
//   with_bools([&](auto log) { kernel<decltype(log)::value><<<...>>>(...); }, log);
template <class F>
void with_bools(F&& f) {
  f();
}
template <class F, class... Rest>
void with_bools(F&& f, bool first, Rest... rest) {
  static_assert((std::is_same_v<Rest, bool> && ...), "with_bools takes bools");
  if (first)
    with_bools([&](auto... later) { f(std::true_type{}, later...); }, rest...);
  else
    with_bools([&](auto... later) { f(std::false_type{}, later...); }, rest...);
}

}  // namespace gpunet
