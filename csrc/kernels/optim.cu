// optim.cu -- fused optimizer updates over every tensor of a parameter group
// in one launch ("multi-tensor apply"): SGD (momentum, dampening, nesterov,
// weight decay) and Adam / AdamW. float32; arithmetic as PyTorch's
// single-tensor algorithms (torch/optim/sgd.py, adam.py), operation by
// operation, so results agree with the NumPy reference to float rounding.
//
// Algorithm
//   The group's tensors are concatenated, conceptually, into one index space
//   [0, total): tensor k owns [begin_k, begin_{k+1}). The kernel walks this
//   space in tiles of blockDim.x consecutive indices (grid-stride over tiles).
//   Per tile, thread 0 finds by binary search over the table the tensors
//   holding the tile's first and last index and publishes them in shared
//   memory; each thread then binary-searches only that range (no search at
//   all when the tile lies inside one tensor, the common case for large
//   tensors) and updates one element. Consecutive threads touch consecutive
//   elements of a tensor, so loads and stores are coalesced; a tile that
//   straddles tensors costs a few divergent iterations, not a second launch.
//   The shared slot is double-buffered by tile parity, so one __syncthreads
//   per tile suffices: thread 0 can only rewrite a slot two tiles later,
//   after every thread has passed the barrier of the tile in between.
//
//   SGD, per element (g = grad, p = param, buf = momentum buffer):
//     d = g + weight_decay * p
//     momentum: buf = fresh ? d : momentum * buf + (1 - dampening) * d
//               d = nesterov ? d + momentum * buf : buf
//     p = p - lr * d
//   Adam / AdamW, per element (t = the tensor's step count):
//     Adam: g = g + weight_decay * p          AdamW: p = p * (1 - lr * weight_decay)
//     m = m + (1 - beta1) * (g - m)           (torch's lerp)
//     v = beta2 * v + (1 - beta2) * g * g
//     p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)
//   The bias corrections are per tensor (row scalars computed in double on
//   the host), because a parameter that was skipped (grad None) in an earlier
//   step has a smaller step count than its neighbours.
//
// Launch shape
//   One launch per group: kThreads = 256 threads per block, grid_for(total) =
//   min(ceil(total / 256), 1024) blocks; 16 bytes of static shared memory.
//   Before it, one cudaMemcpyAsync of the 48-byte rows (host -> device) on the
//   same stream.
//
// Traffic (the floor: every byte read and written once; FLOPs are ~5-15 per
// element, so both kernels are memory bound: bytes / DRAM bandwidth)
//   SGD without momentum: reads p, g; writes p                 = 12 bytes/param
//   SGD with momentum:    reads p, g, buf; writes p, buf       = 20 bytes/param (16 on the fresh step)
//   Adam / AdamW:         reads p, g, m, v; writes p, m, v     = 28 bytes/param
//   plus 48 bytes per tensor for the table.
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "kernels/optim.h"

namespace gpunet {
namespace {

// The largest k in [lo, hi] with table[k].begin <= i; requires table[lo].begin <= i.
__device__ __forceinline__ int find_tensor(const OptimTensor* table, int lo, int hi, int64_t i) {
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid].begin <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

struct SgdUpdate {
  SgdHyper h;
  __device__ __forceinline__ void operator()(const OptimTensor& t, int64_t j) const {
    const float p = t.param[j];
    float d = t.grad[j];
    if (h.weight_decay != 0.f) d = d + h.weight_decay * p;
    if (h.momentum != 0.f) {
      const float buf = t.scalar0 != 0.f ? d : h.momentum * t.state0[j] + h.one_minus_dampening * d;
      t.state0[j] = buf;
      d = h.nesterov ? d + h.momentum * buf : buf;
    }
    t.param[j] = p - h.lr * d;
  }
};

struct AdamUpdate {
  AdamHyper h;
  __device__ __forceinline__ void operator()(const OptimTensor& t, int64_t j) const {
    float p = t.param[j];
    float g = t.grad[j];
    if (h.weight_decay != 0.f) g = g + h.weight_decay * p;
    p = p * h.decay;
    float m = t.state0[j];
    m = m + h.one_minus_beta1 * (g - m);
    const float v = h.beta2 * t.state1[j] + h.one_minus_beta2 * g * g;
    t.state0[j] = m;
    t.state1[j] = v;
    t.param[j] = p - t.scalar0 * (m / (sqrtf(v) / t.scalar1 + h.eps));
  }
};

template <class Update>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(const OptimTensor* __restrict__ table, int n, int64_t total, Update update) {
  __shared__ int span[2][2];  // [tile parity][first, last tensor of the tile]
  int parity = 0;
  const int64_t tile_stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t tile = (int64_t)blockIdx.x * blockDim.x; tile < total; tile += tile_stride) {
    if (threadIdx.x == 0) {
      const int64_t end = tile + blockDim.x < total ? tile + blockDim.x : total;
      const int first = find_tensor(table, 0, n - 1, tile);
      span[parity][0] = first;
      span[parity][1] = find_tensor(table, first, n - 1, end - 1);
    }
    __syncthreads();
    const int64_t i = tile + threadIdx.x;
    if (i < total) {
      const OptimTensor& t = table[find_tensor(table, span[parity][0], span[parity][1], i)];
      update(t, i - t.begin);
    }
    parity ^= 1;
  }
}

template <class Update>
void launch(const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total, const Update& update,
            cudaStream_t stream) {
  if (total == 0 || rows.empty()) return;
  // Pageable host memory: the copy is staged before cudaMemcpyAsync returns,
  // so `rows` may go out of scope right after.
  if (cudaMemcpyAsync(table, rows.data(), rows.size() * sizeof(OptimTensor), cudaMemcpyHostToDevice, stream) !=
      cudaSuccess)
    return;  // the error stays pending for check_launch
  multi_tensor_kernel<Update><<<grid_for(total), kThreads, 0, stream>>>(table, (int)rows.size(), total, update);
}

}  // namespace

void sgd_multi(const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total, const SgdHyper& h,
               cudaStream_t stream) {
  launch(rows, table, total, SgdUpdate{h}, stream);
}

void adam_multi(const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total, const AdamHyper& h,
                cudaStream_t stream) {
  launch(rows, table, total, AdamUpdate{h}, stream);
}

}  // namespace gpunet
