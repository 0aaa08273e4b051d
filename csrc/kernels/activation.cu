// activation.cu -- float32 elementwise activations, forward and backward.
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
//     x[1:]). y may alias x (in-place activations).
//   Launch: 256 threads per block, min(ceil(items / 256), resident blocks)
//     blocks (launch.cuh grid_for: the kernel's occupancy times the SMs), where
//     items = ceil(n / 4) (vector path) or n. Indices are int64 (n may pass 2^31).
//   Traffic: forward reads x and writes y: 8n bytes; backward reads x or y and
//     dy and writes dx: 12n bytes. FLOPs: 1-3 per element for relu, leaky_relu,
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

template <Act A>
__global__ void __launch_bounds__(kThreads)
    act_forward_kernel(const float* x, float* y, int64_t n, bool vec4, float alpha, float beta) {
  elementwise(n, vec4, [=](int64_t, float v) { return act_value<A>(v, alpha, beta); }, y, x);
}

template <Act A>
__global__ void __launch_bounds__(kThreads)
    act_backward_kernel(const float* in, const float* dy, float* dx, int64_t n, bool vec4, float alpha, float beta) {
  elementwise(n, vec4, [=](int64_t, float v, float g) { return act_grad<A>(v, g, alpha, beta); }, dx, in, dy);
}

template <Act A>
void launch_forward(const float* x, float* y, int64_t n, float alpha, float beta, cudaStream_t stream) {
  const bool vec4 = all_aligned16(x, y);
  act_forward_kernel<A>
      <<<elementwise_grid(act_forward_kernel<A>, n, vec4), kThreads, 0, stream>>>(x, y, n, vec4, alpha, beta);
}

template <Act A>
void launch_backward(const float* in, const float* dy, float* dx, int64_t n, float alpha, float beta,
                     cudaStream_t stream) {
  const bool vec4 = all_aligned16(in, dy, dx);
  act_backward_kernel<A>
      <<<elementwise_grid(act_backward_kernel<A>, n, vec4), kThreads, 0, stream>>>(in, dy, dx, n, vec4, alpha, beta);
}

}  // namespace

void act_forward(Act act, const float* x, float* y, int64_t n, float alpha, float beta, cudaStream_t stream) {
  if (n == 0) return;
  switch (act) {
    case Act::Relu: return launch_forward<Act::Relu>(x, y, n, alpha, beta, stream);
    case Act::LeakyRelu: return launch_forward<Act::LeakyRelu>(x, y, n, alpha, beta, stream);
    case Act::Sigmoid: return launch_forward<Act::Sigmoid>(x, y, n, alpha, beta, stream);
    case Act::Tanh: return launch_forward<Act::Tanh>(x, y, n, alpha, beta, stream);
    case Act::Softsign: return launch_forward<Act::Softsign>(x, y, n, alpha, beta, stream);
    case Act::Gelu: return launch_forward<Act::Gelu>(x, y, n, alpha, beta, stream);
    case Act::Softplus: return launch_forward<Act::Softplus>(x, y, n, alpha, beta, stream);
  }
}

void act_backward(Act act, const float* in, const float* dy, float* dx, int64_t n, float alpha, float beta,
                  cudaStream_t stream) {
  if (n == 0) return;
  switch (act) {
    case Act::Relu: return launch_backward<Act::Relu>(in, dy, dx, n, alpha, beta, stream);
    case Act::LeakyRelu: return launch_backward<Act::LeakyRelu>(in, dy, dx, n, alpha, beta, stream);
    case Act::Sigmoid: return launch_backward<Act::Sigmoid>(in, dy, dx, n, alpha, beta, stream);
    case Act::Tanh: return launch_backward<Act::Tanh>(in, dy, dx, n, alpha, beta, stream);
    case Act::Softsign: return launch_backward<Act::Softsign>(in, dy, dx, n, alpha, beta, stream);
    case Act::Gelu: return launch_backward<Act::Gelu>(in, dy, dx, n, alpha, beta, stream);
    case Act::Softplus: return launch_backward<Act::Softplus>(in, dy, dx, n, alpha, beta, stream);
  }
}

}  // namespace gpunet
