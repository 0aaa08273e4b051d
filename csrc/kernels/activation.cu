// activation.cu -- elementwise activations, forward and backward, on float32,
// float16 (__half) and bfloat16 (__nv_bfloat16) storage, computed in float32.
//
// This family is the template for the others: one .cu per family with its
// host launchers, a header (activation.h) declaring them, and a binding
// (csrc/bindings/activation.cpp). The same text is compiled by nvcc for
// gpunet._C and, rewritten by csrc/sim/cu2cpp.py, by g++ for gpunet._C_sim.
//
// act_forward / act_backward
//   Algorithm: one kernel per direction, templated on the activation, so each
//     instantiation is straight-line code without a per-element switch. The
//     grid-stride loop of common/elementwise.cuh: 16-byte float4 vectors when
//     every pointer is 16-byte aligned, then a scalar loop over the n % 4
//     tail (or over all n elements when a pointer is misaligned, e.g. a view
//     x[1:]). y may alias x (in-place activations). Half storage (float16,
//     bfloat16): the same loop with 16-byte vectors of 8 values read as four
//     half2/bfloat162 pairs, each converted to float2, computed in float32 and
//     rounded once to nearest even back to a pair (elementwise16 below);
//     scalar tail and misaligned path as for float.
//   Launch: 256 threads per block, min(ceil(items / 256), resident blocks)
//     blocks (launch.cuh grid_for: the kernel's occupancy times the SMs), where
//     items = ceil(n / 4) (float vector path), ceil(n / 8) (half vector path)
//     or n. Indices are int64 (n may pass 2^31).
//   Traffic: forward reads x and writes y: 8n bytes; backward reads x or y and
//     dy and writes dx: 12n bytes (half storage: half of each). FLOPs: 1-3 per element for relu, leaky_relu,
//     softsign, sigmoid, tanh (plus one exp/tanh), ~10 plus erf/exp for gelu,
//     ~5 plus exp/log1p for softplus. Every case is memory bound: the floor is
//     bytes / DRAM bandwidth (8n / 3.35 TB/s on an H100 SXM).
//   Formulas (as torch.nn.functional): relu max(x, 0); leaky_relu x > 0 ? x :
//     alpha*x; sigmoid 1/(1+e^-x); tanh; softsign x/(1+|x|); gelu exact
//     0.5x(1+erf(x/sqrt2)); softplus log(1+e^(alpha*x))/alpha, or x where
//     alpha*x > beta (alpha = softplus beta, beta = threshold).
#include <cuda_runtime.h>

#include "common/elementwise.cuh"
#include "common/launch.cuh"
#include "common/storage.cuh"
#include "kernels/activation.h"

namespace gpunet {
namespace {

constexpr float kSqrt1_2 = 0.70710678118654752f;     // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2*pi)

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// f(x)
template <Act A>
__device__ __forceinline__ float act_value(float x, float alpha, float beta) {
  if constexpr (A == Act::Relu) {
    return x <= 0.f ? 0.f : x;  // written so that NaN propagates, as in torch
  } else if constexpr (A == Act::LeakyRelu) {
    return x > 0.f ? x : x * alpha;
  } else if constexpr (A == Act::Sigmoid) {
    return sigmoid(x);
  } else if constexpr (A == Act::Tanh) {
    return tanhf(x);
  } else if constexpr (A == Act::Softsign) {
    return x / (1.f + fabsf(x));
  } else if constexpr (A == Act::Gelu) {
    return 0.5f * x * (1.f + erff(x * kSqrt1_2));
  } else {  // Softplus: linear above the threshold, where log1p(exp) would overflow or round to x
    const float bx = alpha * x;
    return bx > beta ? x : log1pf(expf(bx)) / alpha;
  }
}

// dy * f'(.), where `in` is y for relu/sigmoid/tanh and x otherwise
template <Act A>
__device__ __forceinline__ float act_grad(float in, float dy, float alpha, float beta) {
  if constexpr (A == Act::Relu) {
    return in > 0.f ? dy : 0.f;
  } else if constexpr (A == Act::LeakyRelu) {
    return in > 0.f ? dy : dy * alpha;
  } else if constexpr (A == Act::Sigmoid) {
    return dy * in * (1.f - in);
  } else if constexpr (A == Act::Tanh) {
    return dy * (1.f - in * in);
  } else if constexpr (A == Act::Softsign) {
    const float d = 1.f + fabsf(in);
    return dy / (d * d);
  } else if constexpr (A == Act::Gelu) {
    const float cdf = 0.5f * (1.f + erff(in * kSqrt1_2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * in * in);
    return dy * (cdf + in * pdf);
  } else {  // Softplus: d/dx log(1 + e^(alpha x)) / alpha = sigmoid(alpha x)
    const float bx = alpha * in;
    return bx > beta ? dy : dy * sigmoid(bx);
  }
}

template <Act A, class T>
__global__ void __launch_bounds__(kThreads)
    act_forward_kernel(const T* x, T* y, int64_t n, bool vec, float alpha, float beta) {
  elementwise_of(n, vec, [=](int64_t, float v) { return act_value<A>(v, alpha, beta); }, y, x);
}

template <Act A, class T>
__global__ void __launch_bounds__(kThreads)
    act_backward_kernel(const T* in, const T* dy, T* dx, int64_t n, bool vec, float alpha, float beta) {
  elementwise_of(n, vec, [=](int64_t, float v, float g) { return act_grad<A>(v, g, alpha, beta); }, dx, in, dy);
}

// Threads of a launch: one per 16-byte vector (4 floats or 8 half values) or per element.
template <class T, class Kernel>
unsigned grid_of(Kernel kernel, int64_t n, bool vec) {
  const int64_t per_vector = 16 / sizeof(T);
  return grid_for(kernel, vec ? (n + per_vector - 1) / per_vector : n);
}

template <Act A, class T>
void launch_forward(const T* x, T* y, int64_t n, float alpha, float beta, cudaStream_t stream) {
  const bool vec = all_aligned16(x, y);
  act_forward_kernel<A, T><<<grid_of<T>(act_forward_kernel<A, T>, n, vec), kThreads, 0, stream>>>(x, y, n, vec,
                                                                                                   alpha, beta);
}

template <Act A, class T>
void launch_backward(const T* in, const T* dy, T* dx, int64_t n, float alpha, float beta, cudaStream_t stream) {
  const bool vec = all_aligned16(in, dy, dx);
  act_backward_kernel<A, T><<<grid_of<T>(act_backward_kernel<A, T>, n, vec), kThreads, 0, stream>>>(
      in, dy, dx, n, vec, alpha, beta);
}

// f(Act constant) for the activation
template <class F>
void with_act(Act act, F&& f) {
  switch (act) {
    case Act::Relu: return f(std::integral_constant<Act, Act::Relu>{});
    case Act::LeakyRelu: return f(std::integral_constant<Act, Act::LeakyRelu>{});
    case Act::Sigmoid: return f(std::integral_constant<Act, Act::Sigmoid>{});
    case Act::Tanh: return f(std::integral_constant<Act, Act::Tanh>{});
    case Act::Softsign: return f(std::integral_constant<Act, Act::Softsign>{});
    case Act::Gelu: return f(std::integral_constant<Act, Act::Gelu>{});
    case Act::Softplus: return f(std::integral_constant<Act, Act::Softplus>{});
  }
}

}  // namespace

void act_forward(Act act, Storage storage, const void* x, void* y, int64_t n, float alpha, float beta,
                 cudaStream_t stream) {
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_act(act, [&](auto a) {
      launch_forward<decltype(a)::value>(static_cast<const T*>(x), static_cast<T*>(y), n, alpha, beta, stream);
    });
  });
}

void act_backward(Act act, Storage storage, const void* in, const void* dy, void* dx, int64_t n, float alpha,
                  float beta, cudaStream_t stream) {
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_act(act, [&](auto a) {
      launch_backward<decltype(a)::value>(static_cast<const T*>(in), static_cast<const T*>(dy),
                                          static_cast<T*>(dx), n, alpha, beta, stream);
    });
  });
}

}  // namespace gpunet
