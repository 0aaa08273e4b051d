// elementwise.cuh -- the vectorised grid-stride loop of the elementwise
// kernels (activation.cu, dropout.cu): out[k] = f(k, in0[k], in1[k], ...)
// for k in [0, n).
//
// With vec4 (every pointer 16-byte aligned, see aligned16) each thread moves
// 16-byte float4 vectors, one load per input and one store per vector, then
// the n % 4 tail elements one by one; without it (a view such as x[1:]) all
// n elements go one by one. f gets the element's index k, so a counter-based
// generator (dropout) draws the same number for k on either path.
//
// Launch: kThreads threads per block, elementwise_grid(kernel, n, vec4) blocks.
// Indices are int64 throughout: n may exceed 2^31 (each thread's index and
// the grid stride are formed in 64 bits before any product).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/launch.cuh"

namespace gpunet {

// No __restrict__: out may alias an input (in-place ops). Each element is
// read and then written by the same thread.
template <class F, class... In>
__device__ __forceinline__ void elementwise(int64_t n, bool vec4, F f, float* out, const In*... in) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  int64_t tail = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    for (int64_t i = first; i < n4; i += step) {
      const int64_t k = 4 * i;
      // v: each input's float4, copied whole (one 16-byte load per input;
      // fields read through a reference would be four 4-byte loads)
      [&](const auto... v) {
        float4 r;
        r.x = f(k, v.x...);
        r.y = f(k + 1, v.y...);
        r.z = f(k + 2, v.z...);
        r.w = f(k + 3, v.w...);
        reinterpret_cast<float4*>(out)[i] = r;
      }(reinterpret_cast<const float4*>(in)[i]...);
    }
    tail = n4 * 4;
  }
  for (int64_t k = tail + first; k < n; k += step) out[k] = f(k, in[k]...);
}

// Blocks for elementwise() in `kernel`: one thread per float4 vector (the
// last one taking the tail) or per element, at most the resident blocks.
inline int64_t elementwise_items(int64_t n, bool vec4) { return vec4 ? (n + 3) / 4 : n; }
template <class Kernel>
unsigned elementwise_grid(Kernel kernel, int64_t n, bool vec4) {
  return grid_for(kernel, elementwise_items(n, vec4));
}

// True when every pointer allows the float4 path.
template <class... P>
bool all_aligned16(const P*... p) {
  return (aligned16(p) && ...);
}

}  // namespace gpunet
