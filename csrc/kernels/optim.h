// optim.h -- host API of csrc/kernels/optim.cu (algorithms and launch shape there).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "common/storage.h"

namespace gpunet {

// One row of the multi-tensor table: a tensor of the parameter group, its
// buffers and its per-tensor scalars. The binding fills these on the host;
// the launcher copies them into a device workspace of n rows.
struct OptimTensor {
  float* param;        // updated in place (a half weight's float32 master)
  const void* grad;    // of the launch's storage type: float, or the half weights'
  void* weight;        // half storage: the weight, written with param rounded once; null for float32
  float* state0;       // SGD: momentum buffer (null without momentum); Adam: exp_avg
  float* state1;       // Adam: exp_avg_sq; SGD: null
  int64_t begin;       // index of the tensor's first quad in the concatenated quad space
  int64_t numel;       // elements; the tensor owns ceil(numel / 4) quads of 4 consecutive elements
  float scalar0;       // SGD: 1 when the momentum buffer is fresh (the step copies d into it), else 0
                       // Adam: step_size = lr / (1 - beta1^t)
  float scalar1;       // Adam: sqrt(1 - beta2^t); SGD: unused
};
static_assert(sizeof(OptimTensor) == 64, "OptimTensor layout");

struct SgdHyper {
  float lr, momentum, one_minus_dampening, weight_decay;
  bool nesterov;
};

// Differences such as 1 - beta1 are rounded from double on the host, as
// PyTorch passes them to its float kernels.
struct AdamHyper {
  float one_minus_beta1, beta2, one_minus_beta2, eps;
  float weight_decay;  // L2 term added to the gradient (Adam); 0 for AdamW
  float decay;         // 1 - lr * weight_decay (AdamW); 1 for Adam
};

// The GradScaler's part of an update (gpunet/amp/grad_scaler.py): found_inf,
// when not null, is a device float32 flag set by nonfinite_check (or by the
// scaler's in-place unscale); nonzero there, the launch returns at once and
// nothing is written. Each gradient is multiplied by inv_scale in float32
// registers as it is read (1 when the gradients were unscaled in place).
struct GradScaling {
  const float* found_inf = nullptr;
  float inv_scale = 1.f;
};

// One row of nonfinite_check's table: a gradient of any storage type.
struct CheckTensor {
  const void* data;
  int64_t begin;    // as OptimTensor::begin
  int64_t numel;
  Storage storage;  // this tensor's type: one launch checks mixed float32 and half gradients
};
static_assert(sizeof(CheckTensor) <= sizeof(OptimTensor), "a check row fits the optimizer's table workspace");

// Quads of a tensor of n elements.
inline int64_t optim_quads(int64_t n) { return (n + 3) / 4; }

// Both: `rows` are the group's non-empty tensors in order, rows[k].begin the
// running sum of the quads before k, `total` the sum of all quads. `table`
// is device memory for rows.size() rows; it is written (cudaMemcpyAsync on
// `stream` from pinned host memory) and then read by ONE kernel launch. No
// launch when total == 0. `storage`: the grads' (and half weights') type;
// F32 for float32 groups (no weights).
void sgd_multi(Storage storage, const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total,
               const SgdHyper& h, const GradScaling& scaling, cudaStream_t stream);
void adam_multi(Storage storage, const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total,
                const AdamHyper& h, const GradScaling& scaling, cudaStream_t stream);
// Sets *found_inf = 1 (never clears it) when any element of any row's tensor
// is an inf or a NaN; reads the tensors only. Same table protocol.
void nonfinite_check(const std::vector<CheckTensor>& rows, CheckTensor* table, int64_t total, float* found_inf,
                     cudaStream_t stream);

}  // namespace gpunet
