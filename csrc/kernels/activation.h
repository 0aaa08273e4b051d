// activation.h -- host API of csrc/kernels/activation.cu (algorithms there).
//
// Launchers take device pointers and element counts, launch on `stream` and
// return at once; the caller checks the launch (check_launch in binding.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

enum class Act : int { Relu, LeakyRelu, Sigmoid, Tanh, Softsign, Gelu, Softplus };

// The backward of relu, sigmoid and tanh is cheapest from the output y; the
// others need the input x.
constexpr bool act_backward_uses_output(Act act) {
  return act == Act::Relu || act == Act::Sigmoid || act == Act::Tanh;
}


// y = f(x) over n elements of `storage` type; y may alias x (in place).
//   alpha: negative_slope of leaky_relu, beta of softplus (unused otherwise)
//   beta:  threshold of softplus (unused otherwise)
void act_forward(Act act, Storage storage, const void* x, void* y, int64_t n, float alpha, float beta,
                 cudaStream_t stream);

// dx = dy * f'(.) over n elements, where `in` is y if act_backward_uses_output(act), else x.
void act_backward(Act act, Storage storage, const void* in, const void* dy, void* dx, int64_t n, float alpha,
                  float beta, cudaStream_t stream);

}  // namespace gpunet
