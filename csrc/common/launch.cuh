// launch.cuh -- host-side launch helpers shared by the kernel families.
//
// Included by csrc/kernels/*.cu only (host code of the .cu files), so it
// compiles both under nvcc and under the CPU runtime (csrc/sim/cudasim.h).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

namespace gpunet {

// Threads per block of the 1-D (grid-stride) kernels: a multiple of the warp
// size that keeps 8 blocks resident per SM on sm_80/sm_90.
constexpr int kThreads = 256;

// CUDA's grid limits: gridDim.x <= 2^31 - 1, gridDim.y and gridDim.z <= 65535.
constexpr int64_t kMaxGridX = INT32_MAX;
constexpr int64_t kMaxGridYZ = 65535;

// The grid of a launch, checked against CUDA's limits before anything runs:
// past them std::length_error (ValueError in Python) naming the kernel,
// instead of a truncated unsigned grid or a launch error after the fact.
inline dim3 checked_grid(const char* kernel, int64_t x, int64_t y = 1, int64_t z = 1) {
  if (x < 1 || y < 1 || z < 1 || x > kMaxGridX || y > kMaxGridYZ || z > kMaxGridYZ)
    throw std::length_error(std::string("gpunet: ") + kernel + " needs a grid of (" + std::to_string(x) + ", " +
                            std::to_string(y) + ", " + std::to_string(z) + ") blocks; CUDA allows at most (" +
                            std::to_string(kMaxGridX) + ", " + std::to_string(kMaxGridYZ) + ", " +
                            std::to_string(kMaxGridYZ) + ")");
  return dim3((unsigned)x, (unsigned)y, (unsigned)z);
}

// Blocks of `threads` threads that fill one SM of an sm_80/sm_90 GPU (2048
// threads, 32 blocks) when registers and shared memory do not limit them.
inline int thread_limited_blocks_per_sm(int threads) { return std::clamp(2048 / threads, 1, 32); }

// SMs of the current device (132 on an H100/H200 SXM; the simulator says 132).
inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
#ifdef CUDASIM
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) sms = prop.multiProcessorCount;
#else
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) sms = 0;
#endif
  (void)cudaGetLastError();  // a failed query must not surface as the next launch's error
  return sms > 0 ? sms : 132;
}

// Blocks of `kernel` (launched with `threads` threads and `smem` bytes of
// dynamic shared memory) resident on the whole current device at once: its
// occupancy (registers, shared memory, threads) per SM times the SMs, asked
// once per kernel, shape and device. A grid-stride kernel needs no more
// blocks than that: more only add scheduling work (and, in the simulator,
// fibers). The simulator has no register model: there the thread limit alone.
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem = 0) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) (void)cudaGetLastError();
  using Key = std::tuple<const void*, int, size_t, int>;
  static std::mutex mu;
  static std::map<Key, int64_t> cache;
  const Key key{reinterpret_cast<const void*>(kernel), threads, smem, device};
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int per_sm = 0;
#ifdef CUDASIM
  per_sm = thread_limited_blocks_per_sm(threads);
#else
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess || per_sm < 1) {
    (void)cudaGetLastError();  // not this kernel's launch error
    per_sm = thread_limited_blocks_per_sm(threads);
  }
#endif
  return cache[key] = (int64_t)per_sm * sm_count();
}

// Blocks of a grid-stride `kernel` for `work` independent items, one item
// per thread per iteration: enough for every item, at most what the device
// holds at once (so never past the grid's limits).
template <class Kernel>
unsigned grid_for(Kernel kernel, int64_t work, int threads = kThreads, size_t smem = 0) {
  const int64_t blocks = (work + threads - 1) / threads;
  return (unsigned)std::clamp<int64_t>(blocks, 1, resident_blocks(kernel, threads, smem));
}

// The same for a kernel of kThreads threads that registers do not limit.
inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return (unsigned)std::clamp<int64_t>(blocks, 1, (int64_t)thread_limited_blocks_per_sm(kThreads) * sm_count());
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
