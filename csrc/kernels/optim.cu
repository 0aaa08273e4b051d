// optim.cu -- fused optimizer updates over every tensor of a parameter group
// in one launch ("multi-tensor apply"): SGD (momentum, dampening, nesterov,
// weight decay) and Adam / AdamW. float32 parameters, or half weights
// (float16, bfloat16) through float32 master copies (below); arithmetic as PyTorch's
// single-tensor algorithms (torch/optim/sgd.py, adam.py), operation by
// operation, so results agree with the NumPy reference to float rounding.
//
// Algorithm
//   The group's tensors are concatenated, conceptually, into one index space
//   of quads (4 consecutive elements of one tensor) [0, total): tensor k owns
//   [begin_k, begin_{k+1}), ceil(numel_k / 4) quads. The kernel walks this
//   space in tiles of blockDim.x consecutive quads (grid-stride over tiles).
//   Per tile, thread 0 finds by binary search over the table the tensors
//   holding the tile's first and last quad and publishes them in shared
//   memory; each thread then binary-searches only that range (no search at
//   all when the tile lies inside one tensor, the common case for large
//   tensors) and updates one quad: one float4 load/store per array (16
//   sectors per warp request, the ideal) when the tensor's arrays are
//   16-byte aligned and the quad is whole, else element by element (a
//   misaligned view, or the tensor's last n % 4 elements). Consecutive
//   threads touch consecutive quads of a tensor, so loads and stores are
//   coalesced; a tile that straddles tensors costs a few divergent
//   iterations, not a second launch. The shared slot is double-buffered by
//   tile parity, so one __syncthreads per tile suffices: thread 0 can only
//   rewrite a slot two tiles later, after every thread has passed the
//   barrier of the tile in between.
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
//   Half weights: param is the weight's float32 master and the state is
//   float32; the half gradient is read in float32, the update runs on the
//   master exactly as for float32, and the same thread writes the master
//   rounded once (to nearest even) into the half weight: one pass, no second
//   launch to round. A quad's half gradient and weight are 8-byte accesses.
//   GradScaler (optim.h's GradScaling): as PyTorch's fused optimizers take
//   grad_scale and found_inf. nonfinite_check, a launch of its own over
//   every gradient of the optimizer (read only; each row its own storage
//   type), sets a device flag when any value is an inf or a NaN; the update
//   launch reads the flag first and returns at once when it is set, so a
//   skipped step writes nothing (the check cannot be folded into the update
//   launch: a block that finds an inf cannot undo what other blocks already
//   wrote). Otherwise each gradient is multiplied by inv_scale as it is read,
//   in registers: the gradients are read once for the update and never
//   rewritten.
//
// Launch shape
//   One launch per group: kThreads = 256 threads per block, grid_for(kernel,
//   total quads) = min(ceil(total / 256), resident blocks) blocks; 16 bytes
//   of static shared memory. Before it, one cudaMemcpyAsync of the 64-byte
//   rows on the same stream, from pinned host memory (a true asynchronous
//   copy: from pageable memory the driver first copies synchronously into
//   its own staging). The pinned buffer is reused only once the event
//   recorded after its copy has completed, so it stays intact until the GPU
//   has read it. Loads average ~6 sectors per request in the profile: the
//   tensors' float4 loads are 16 (the ideal), the table reads broadcasts.
//
// Traffic (the floor: every byte read and written once; FLOPs are ~5-15 per
// element, so both kernels are memory bound: bytes / DRAM bandwidth)
//   SGD without momentum: reads p, g; writes p                 = 12 bytes/param
//   SGD with momentum:    reads p, g, buf; writes p, buf       = 20 bytes/param
//   Adam / AdamW:         reads p, g, m, v; writes p, m, v     = 28 bytes/param
//   (half weights: g is 2 bytes and the weight's 2 are written too: the same
//   totals) plus 64 bytes per tensor for the table.
//   nonfinite_check: reads every gradient once (4 or 2 bytes per element),
//   32 bytes per tensor of table; the update then reads one flag per thread
//   (a broadcast). The scaler's unscale-in-place it replaces read and wrote
//   every gradient and then read it again for its isfinite pass.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "common/launch.cuh"
#include "common/storage.cuh"
#include "kernels/optim.h"

namespace gpunet {
namespace {

// The largest k in [lo, hi] with table[k].begin <= q; requires table[lo].begin <= q.
template <class Row>
__device__ __forceinline__ int find_tensor(const Row* table, int lo, int hi, int64_t q) {
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid].begin <= q)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// The updates, per element: p, s0, s1 updated in place (s0, s1 only where
// the tensor has that buffer).
struct SgdUpdate {
  SgdHyper h;
  __device__ __forceinline__ void operator()(const OptimTensor& t, float& p, float g, float& buf, float&) const {
    float d = g;
    if (h.weight_decay != 0.f) d = d + h.weight_decay * p;
    if (h.momentum != 0.f) {
      buf = t.scalar0 != 0.f ? d : h.momentum * buf + h.one_minus_dampening * d;
      d = h.nesterov ? d + h.momentum * buf : buf;
    }
    p = p - h.lr * d;
  }
};

struct AdamUpdate {
  AdamHyper h;
  __device__ __forceinline__ void operator()(const OptimTensor& t, float& p, float g, float& m, float& v) const {
    if (h.weight_decay != 0.f) g = g + h.weight_decay * p;
    p = p * h.decay;
    m = m + h.one_minus_beta1 * (g - m);
    v = h.beta2 * v + h.one_minus_beta2 * g * g;
    p = p - t.scalar0 * (m / (sqrtf(v) / t.scalar1 + h.eps));
  }
};

// Four consecutive values of storage type T as one access: a float4, or two
// half pairs (8 bytes); read into / written from float32.
template <class T>
struct alignas(8) Quad {
  typename HalfPair<T>::type lo, hi;
};
template <>
struct Quad<float> {
  float4 v;
};

template <class T>
__device__ __forceinline__ void load_quad(const void* base, int64_t j, float (&out)[4]) {
  const Quad<T> q = static_cast<const Quad<T>*>(base)[j];
  if constexpr (std::is_same_v<T, float>) {
    out[0] = q.v.x, out[1] = q.v.y, out[2] = q.v.z, out[3] = q.v.w;
  } else {
    const float2 lo = HalfPair<T>::to_float2(q.lo), hi = HalfPair<T>::to_float2(q.hi);
    out[0] = lo.x, out[1] = lo.y, out[2] = hi.x, out[3] = hi.y;
  }
}

template <class T>
__device__ __forceinline__ void store_quad(void* base, int64_t j, const float (&in)[4]) {
  Quad<T> q;
  if constexpr (std::is_same_v<T, float>) {
    q.v = float4{in[0], in[1], in[2], in[3]};
  } else {
    q.lo = HalfPair<T>::from_float2(in[0], in[1]);
    q.hi = HalfPair<T>::from_float2(in[2], in[3]);
  }
  static_cast<Quad<T>*>(base)[j] = q;
}

template <class T>
__device__ __forceinline__ bool vector_aligned(const OptimTensor& t) {
  const uintptr_t floats = (uintptr_t)t.param | (uintptr_t)t.state0 | (uintptr_t)t.state1;
  const uintptr_t stored = (uintptr_t)t.grad | (uintptr_t)t.weight;
  return floats % 16 == 0 && stored % sizeof(Quad<T>) == 0;  // null buffers are aligned
}

// Quad j of tensor t: elements 4j .. 4j + 3 (those below numel). Each
// gradient is read once, in float32, times inv_scale (an unfused multiply:
// the same float32 rounding as the scaler's own unscale, not contracted into
// the update's fma).
template <class T, class Update>
__device__ __forceinline__ void update_quad(const Update& update, const OptimTensor& t, int64_t j, float inv_scale) {
  const int64_t e = 4 * j;
  if (e + 4 <= t.numel && vector_aligned<T>(t)) {
    // whole quads: one 16-byte (float) or 8-byte (half) load and store per array
    float p[4], g[4], s0[4] = {}, s1[4] = {};
    load_quad<float>(t.param, j, p);
    load_quad<T>(t.grad, j, g);
    if (t.state0) load_quad<float>(t.state0, j, s0);
    if (t.state1) load_quad<float>(t.state1, j, s1);
#pragma unroll
    for (int i = 0; i < 4; ++i) update(t, p[i], __fmul_rn(g[i], inv_scale), s0[i], s1[i]);
    store_quad<float>(t.param, j, p);
    if constexpr (!std::is_same_v<T, float>) store_quad<T>(t.weight, j, p);
    if (t.state0) store_quad<float>(t.state0, j, s0);
    if (t.state1) store_quad<float>(t.state1, j, s1);
    return;
  }
  const T* grad = static_cast<const T*>(t.grad);
  const int64_t end = e + 4 < t.numel ? e + 4 : t.numel;
  for (int64_t k = e; k < end; ++k) {
    float p = t.param[k], s0 = t.state0 ? t.state0[k] : 0.f, s1 = t.state1 ? t.state1[k] : 0.f;
    update(t, p, __fmul_rn(to_float(grad[k]), inv_scale), s0, s1);
    t.param[k] = p;
    if constexpr (!std::is_same_v<T, float>) static_cast<T*>(t.weight)[k] = from_float<T>(p);
    if (t.state0) t.state0[k] = s0;
    if (t.state1) t.state1[k] = s1;
  }
}

// The tile walk shared by the kernels: apply(table[k], j) for every quad of
// the concatenated space, j counted from tensor k's first quad. span is the
// kernel's __shared__ int[2][2] (see the file comment).
template <class Row, class Apply>
__device__ __forceinline__ void for_each_quad(const Row* table, int n, int64_t total, int (*span)[2], Apply apply) {
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
    const int64_t q = tile + threadIdx.x;
    if (q < total) {
      const Row& t = table[find_tensor(table, span[parity][0], span[parity][1], q)];
      apply(t, q - t.begin);
    }
    parity ^= 1;
  }
}

template <class T, class Update>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(const OptimTensor* __restrict__ table, int n, int64_t total, Update update,
                        GradScaling scaling) {
  // a step the scaler skips: every thread leaves before the first barrier
  // and nothing is written (the flag is the same for the whole grid)
  if (scaling.found_inf != nullptr && *scaling.found_inf != 0.f) return;
  __shared__ int span[2][2];  // [tile parity][first, last tensor of the tile]
  for_each_quad(table, n, total, span,
                [&](const OptimTensor& t, int64_t j) { update_quad<T>(update, t, j, scaling.inv_scale); });
}

__device__ __forceinline__ bool nonfinite(float x) { return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u; }

// Whether quad j of tensor t holds an inf or a NaN (half values widen exactly).
template <class T>
__device__ __forceinline__ bool quad_nonfinite(const CheckTensor& t, int64_t j) {
  const int64_t e = 4 * j;
  float v[4] = {};
  if (e + 4 <= t.numel && (uintptr_t)t.data % sizeof(Quad<T>) == 0) {
    load_quad<T>(t.data, j, v);
  } else {
    const T* data = static_cast<const T*>(t.data);
    for (int64_t k = e; k < t.numel && k < e + 4; ++k) v[k - e] = to_float(data[k]);
  }
  return nonfinite(v[0]) || nonfinite(v[1]) || nonfinite(v[2]) || nonfinite(v[3]);
}

__global__ void __launch_bounds__(kThreads)
    nonfinite_kernel(const CheckTensor* __restrict__ table, int n, int64_t total, float* found_inf) {
  __shared__ int span[2][2];
  for_each_quad(table, n, total, span, [&](const CheckTensor& t, int64_t j) {
    const bool bad = t.storage == Storage::F32   ? quad_nonfinite<float>(t, j)
                     : t.storage == Storage::F16 ? quad_nonfinite<__half>(t, j)
                                                 : quad_nonfinite<__nv_bfloat16>(t, j);
    // an atomic: several threads may find one, and they only ever write 1
    if (bad) atomicExch(found_inf, 1.f);
  });
}

// Host -> device copies through pinned buffers, each reused only once the
// event recorded after its last copy has completed (until then the DMA may
// still be reading it). The buffers live as long as the process: a handful,
// bounded by the copies in flight at once.
class PinnedStaging {
 public:
  cudaError_t copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    int device = 0;
    if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
    std::lock_guard<std::mutex> lock(mu_);
    Slot* slot = nullptr;
    for (Slot& s : slots_)
      if (s.device == device && s.bytes >= bytes && copy_done(s.copied)) {
        slot = &s;
        break;
      }
    if (slot == nullptr) {
      Slot s{nullptr, std::max<size_t>(bytes, 4096), device, nullptr};
      if (const cudaError_t e = cudaMallocHost(&s.host, s.bytes); e != cudaSuccess) return e;
      if (const cudaError_t e = cudaEventCreate(&s.copied); e != cudaSuccess) {
        cudaFreeHost(s.host);
        return e;
      }
      slot = &slots_.emplace_back(s);
    }
    std::memcpy(slot->host, src, bytes);
    if (const cudaError_t e = cudaMemcpyAsync(dst, slot->host, bytes, cudaMemcpyHostToDevice, stream); e != cudaSuccess)
      return e;
    return cudaEventRecord(slot->copied, stream);
  }

 private:
  struct Slot {
    void* host;
    size_t bytes;
    int device;
    cudaEvent_t copied;  // recorded after the slot's last copy (a fresh event counts as complete)
  };

  static bool copy_done(cudaEvent_t e) {
#ifdef CUDASIM
    (void)e;
    return true;  // the simulator's copies complete before cudaMemcpyAsync returns
#else
    return cudaEventQuery(e) == cudaSuccess;  // cudaErrorNotReady is no error: it stays out of cudaGetLastError
#endif
  }

  std::mutex mu_;
  std::deque<Slot> slots_;  // a deque keeps the slots' addresses stable as it grows
};

// Copies the rows into the device table; false when there is nothing to
// launch (no quad) or the copy failed (its error stays pending for
// check_launch). The callers launch their kernel by name: the simulator's
// race reports and profile name a kernel by its launch expression.
template <class Row>
bool stage_rows(const std::vector<Row>& rows, Row* table, int64_t total, cudaStream_t stream) {
  if (total == 0 || rows.empty()) return false;
  static PinnedStaging staging;  // one per kind of row
  return staging.copy_to_device(table, rows.data(), rows.size() * sizeof(Row), stream) == cudaSuccess;
}

template <class Update>
void launch(Storage storage, const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total,
            const Update& update, const GradScaling& scaling, cudaStream_t stream) {
  if (!stage_rows(rows, table, total, stream)) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    multi_tensor_kernel<T, Update><<<grid_for(multi_tensor_kernel<T, Update>, total), kThreads, 0, stream>>>(
        table, (int)rows.size(), total, update, scaling);
  });
}

}  // namespace

void sgd_multi(Storage storage, const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total,
               const SgdHyper& h, const GradScaling& scaling, cudaStream_t stream) {
  launch(storage, rows, table, total, SgdUpdate{h}, scaling, stream);
}

void adam_multi(Storage storage, const std::vector<OptimTensor>& rows, OptimTensor* table, int64_t total,
                const AdamHyper& h, const GradScaling& scaling, cudaStream_t stream) {
  launch(storage, rows, table, total, AdamUpdate{h}, scaling, stream);
}

void nonfinite_check(const std::vector<CheckTensor>& rows, CheckTensor* table, int64_t total, float* found_inf,
                     cudaStream_t stream) {
  if (!stage_rows(rows, table, total, stream)) return;
  nonfinite_kernel<<<grid_for(nonfinite_kernel, total), kThreads, 0, stream>>>(table, (int)rows.size(), total,
                                                                                 found_inf);
}

}  // namespace gpunet
