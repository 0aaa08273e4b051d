// rnn.cu -- the elementwise part of one LSTM / GRU / Elman RNN step, fused into one
// kernel per direction. The Python glue (gpunet/ops/rnn.py) runs a layer as:
// ONE cuBLAS GEMM for every timestep's input projection x W_ih^T (+ b_ih),
// then per step one GEMM h_{t-1} W_hh^T and one cell kernel; backward per step
// one cell-backward kernel and one GEMM dgates W_hh, and the weight gradients
// as one GEMM each over all timesteps.
//
// Every kernel is templated on the storage type (float, __half,
// __nv_bfloat16): it reads its inputs in float32, computes the cell in
// float32 and rounds each output (gates, h, c, gradients) once. With half
// storage the state c is kept in that type between steps, as h is.
//
// lstm_cell_forward
//   Algorithm: thread per (b, j) of the (B, H) state, grid-stride. It reads
//     the four gate pre-activations of hidden unit j (columns j, H+j, 2H+j,
//     3H+j of row b of xg and hg, plus b_hh), applies sigmoid/tanh, updates
//     c = f c_prev + i g, h = o tanh(c), and writes the activated gates (in
//     place over xg: a thread reads all four of its inputs before writing
//     them), h and c. Neighbouring threads touch neighbouring columns of each
//     gate block, so every load and store is coalesced (4 sectors per
//     request; ~4.5 in the profile where a warp's 32 units wrap into the next
//     row b at a hidden size that is no multiple of 32 floats).
//   Launch: 256 threads per block, min(ceil(B·H / 256), resident blocks) blocks
//     (launch.cuh grid_for).
//   Traffic per (b, j): reads 4 xg + 4 hg + c_prev (+ 4 b_hh, cached) = 9
//     floats, writes 4 gates + h + c = 6 floats: 60·B·H bytes. ~25 FLOPs plus
//     3 expf and 2 tanhf. Memory bound: floor 60·B·H / DRAM bandwidth; in
//     practice the step is dominated by the launch and the recurrent GEMM.
//
// lstm_cell_backward
//   Same thread mapping. With dh = dy + dh_next, tc = tanh(c) (recomputed:
//   one tanhf is cheaper than storing and re-reading a (T, B, H) array):
//     dc   = dc_next + dh o (1 - tc^2)
//     d_i  = dc g i (1 - i),  d_f = dc c_prev f (1 - f),
//     d_g  = dc i (1 - g^2),  d_o = dh tc o (1 - o),  dc_prev = dc f.
//   Traffic per (b, j): reads 4 gates + c_prev + c + dy + dh_next + dc_next
//   = 9 floats, writes 4 + 1: 56·B·H bytes; ~30 FLOPs plus one tanhf.
//
// rnn_cell_forward / rnn_cell_backward
//   Thread per element of (B, H): h = act(xg + hg + b_hh[j]) (12 bytes read,
//   4 written per element), dpre = (dy + dh_next) act'(h) (12 read, 4 written).
//
// gru_cell_forward / gru_cell_backward
//   Thread per (b, j) as the LSTM's, over the three gate blocks r, z, n of
//   row b. Forward reads 3 xg + 3 hg + h_prev (+ 3 b_hh, cached) = 7 floats
//   and writes 3 gates + hn + h = 5: 48·B·H bytes, 2 expf and one tanhf.
//   hn = hg_n + b_hn is saved because r multiplies it (backward needs it for
//   dr). Backward reads 3 gates + hn + h_prev + dy + dh_next = 7 floats and
//   writes 3 dxg + 3 dhg + dh_prev = 7: 56·B·H bytes, ~25 FLOPs.
//
// No __restrict__ on pointers that may alias (gates/xg, dc_prev/dc_next, h/xg).
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "common/storage.cuh"
#include "kernels/rnn.h"

namespace gpunet {
namespace {

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

template <class T>
__global__ void __launch_bounds__(kThreads)
    lstm_cell_forward_kernel(const T* xg, const T* __restrict__ hg, const T* __restrict__ b_hh,
                             const T* __restrict__ c_prev, T* gates, T* __restrict__ h,
                             T* __restrict__ c, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 4 * hidden + j;  // column j of gate block i in row b
    float pre[4];
    for (int k = 0; k < 4; ++k) {
      pre[k] = to_float(xg[row + k * hidden]) + to_float(hg[row + k * hidden]);
      if (b_hh != nullptr) pre[k] += to_float(b_hh[k * hidden + j]);
    }
    const float i = sigmoidf(pre[0]), f = sigmoidf(pre[1]), g = tanhf(pre[2]), o = sigmoidf(pre[3]);
    const float cn = f * to_float(c_prev[e]) + i * g;
    gates[row] = from_float<T>(i);
    gates[row + hidden] = from_float<T>(f);
    gates[row + 2 * hidden] = from_float<T>(g);
    gates[row + 3 * hidden] = from_float<T>(o);
    c[e] = from_float<T>(cn);
    h[e] = from_float<T>(o * tanhf(cn));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    lstm_cell_backward_kernel(const T* __restrict__ gates, const T* __restrict__ c_prev,
                              const T* __restrict__ c, const T* __restrict__ dy,
                              const T* __restrict__ dh_next, const T* dc_next, T* __restrict__ dgates,
                              T* dc_prev, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 4 * hidden + j;
    const float i = to_float(gates[row]), f = to_float(gates[row + hidden]);
    const float g = to_float(gates[row + 2 * hidden]), o = to_float(gates[row + 3 * hidden]);
    const float dh = (dy != nullptr ? to_float(dy[e]) : 0.f) + (dh_next != nullptr ? to_float(dh_next[e]) : 0.f);
    const float tc = tanhf(to_float(c[e]));
    const float dc = (dc_next != nullptr ? to_float(dc_next[e]) : 0.f) + dh * o * (1.f - tc * tc);
    dgates[row] = from_float<T>(dc * g * i * (1.f - i));
    dgates[row + hidden] = from_float<T>(dc * to_float(c_prev[e]) * f * (1.f - f));
    dgates[row + 2 * hidden] = from_float<T>(dc * i * (1.f - g * g));
    dgates[row + 3 * hidden] = from_float<T>(dh * tc * o * (1.f - o));
    dc_prev[e] = from_float<T>(dc * f);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    rnn_cell_forward_kernel(const T* xg, const T* __restrict__ hg, const T* __restrict__ b_hh, T* h,
                            int64_t n, int64_t hidden, bool relu) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    float v = to_float(xg[e]) + to_float(hg[e]);
    if (b_hh != nullptr) v += to_float(b_hh[e % hidden]);
    h[e] = from_float<T>(relu ? (v <= 0.f ? 0.f : v) : tanhf(v));  // relu written so that NaN propagates
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    rnn_cell_backward_kernel(const T* __restrict__ h, const T* __restrict__ dy,
                             const T* __restrict__ dh_next, T* __restrict__ dpre, int64_t n, bool relu) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const float d = (dy != nullptr ? to_float(dy[e]) : 0.f) + (dh_next != nullptr ? to_float(dh_next[e]) : 0.f);
    const float y = to_float(h[e]);
    dpre[e] = from_float<T>(relu ? (y > 0.f ? d : 0.f) : d * (1.f - y * y));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    gru_cell_forward_kernel(const T* xg, const T* __restrict__ hg, const T* __restrict__ b_hh,
                            const T* __restrict__ h_prev, T* gates, T* __restrict__ hn,
                            T* __restrict__ h, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 3 * hidden + j;  // column j of gate block r in row b
    float rec[3];
    for (int k = 0; k < 3; ++k)
      rec[k] = to_float(hg[row + k * hidden]) + (b_hh != nullptr ? to_float(b_hh[k * hidden + j]) : 0.f);
    const float r = sigmoidf(to_float(xg[row]) + rec[0]);
    const float z = sigmoidf(to_float(xg[row + hidden]) + rec[1]);
    const float nn = tanhf(to_float(xg[row + 2 * hidden]) + r * rec[2]);
    gates[row] = from_float<T>(r);
    gates[row + hidden] = from_float<T>(z);
    gates[row + 2 * hidden] = from_float<T>(nn);
    hn[e] = from_float<T>(rec[2]);
    h[e] = from_float<T>((1.f - z) * nn + z * to_float(h_prev[e]));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    gru_cell_backward_kernel(const T* __restrict__ gates, const T* __restrict__ hn,
                             const T* __restrict__ h_prev, const T* __restrict__ dy,
                             const T* __restrict__ dh_next, T* __restrict__ dxg, T* __restrict__ dhg,
                             T* __restrict__ dh_prev, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 3 * hidden + j;
    const float r = to_float(gates[row]), z = to_float(gates[row + hidden]), nn = to_float(gates[row + 2 * hidden]);
    const float dh = (dy != nullptr ? to_float(dy[e]) : 0.f) + (dh_next != nullptr ? to_float(dh_next[e]) : 0.f);
    const float dn = dh * (1.f - z) * (1.f - nn * nn);
    const float dz = dh * (to_float(h_prev[e]) - nn) * z * (1.f - z);
    const float dr = dn * to_float(hn[e]) * r * (1.f - r);
    dxg[row] = from_float<T>(dr);
    dxg[row + hidden] = from_float<T>(dz);
    dxg[row + 2 * hidden] = from_float<T>(dn);
    dhg[row] = from_float<T>(dr);
    dhg[row + hidden] = from_float<T>(dz);
    dhg[row + 2 * hidden] = from_float<T>(dn * r);
    dh_prev[e] = from_float<T>(dh * z);
  }
}

}  // namespace

void lstm_cell_forward(Storage storage, const void* xg, const void* hg, const void* b_hh, const void* c_prev,
                       void* gates, void* h, void* c, int64_t batch, int64_t hidden, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    lstm_cell_forward_kernel<T><<<grid_for(lstm_cell_forward_kernel<T>, n), kThreads, 0, stream>>>(
        static_cast<const T*>(xg), static_cast<const T*>(hg), static_cast<const T*>(b_hh),
        static_cast<const T*>(c_prev), static_cast<T*>(gates), static_cast<T*>(h), static_cast<T*>(c), batch, hidden);
  });
}

void lstm_cell_backward(Storage storage, const void* gates, const void* c_prev, const void* c, const void* dy,
                        const void* dh_next, const void* dc_next, void* dgates, void* dc_prev, int64_t batch,
                        int64_t hidden, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    lstm_cell_backward_kernel<T><<<grid_for(lstm_cell_backward_kernel<T>, n), kThreads, 0, stream>>>(
        static_cast<const T*>(gates), static_cast<const T*>(c_prev), static_cast<const T*>(c),
        static_cast<const T*>(dy), static_cast<const T*>(dh_next), static_cast<const T*>(dc_next),
        static_cast<T*>(dgates), static_cast<T*>(dc_prev), batch, hidden);
  });
}

void rnn_cell_forward(Storage storage, const void* xg, const void* hg, const void* b_hh, void* h, int64_t batch,
                      int64_t hidden, bool relu, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    rnn_cell_forward_kernel<T><<<grid_for(rnn_cell_forward_kernel<T>, n), kThreads, 0, stream>>>(
        static_cast<const T*>(xg), static_cast<const T*>(hg), static_cast<const T*>(b_hh), static_cast<T*>(h), n,
        hidden, relu);
  });
}

void rnn_cell_backward(Storage storage, const void* h, const void* dy, const void* dh_next, void* dpre,
                       int64_t batch, int64_t hidden, bool relu, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    rnn_cell_backward_kernel<T><<<grid_for(rnn_cell_backward_kernel<T>, n), kThreads, 0, stream>>>(
        static_cast<const T*>(h), static_cast<const T*>(dy), static_cast<const T*>(dh_next), static_cast<T*>(dpre),
        n, relu);
  });
}

void gru_cell_forward(Storage storage, const void* xg, const void* hg, const void* b_hh, const void* h_prev,
                      void* gates, void* hn, void* h, int64_t batch, int64_t hidden, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    gru_cell_forward_kernel<T><<<grid_for(gru_cell_forward_kernel<T>, n), kThreads, 0, stream>>>(
        static_cast<const T*>(xg), static_cast<const T*>(hg), static_cast<const T*>(b_hh),
        static_cast<const T*>(h_prev), static_cast<T*>(gates), static_cast<T*>(hn), static_cast<T*>(h), batch,
        hidden);
  });
}

void gru_cell_backward(Storage storage, const void* gates, const void* hn, const void* h_prev, const void* dy,
                       const void* dh_next, void* dxg, void* dhg, void* dh_prev, int64_t batch, int64_t hidden,
                       cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    gru_cell_backward_kernel<T><<<grid_for(gru_cell_backward_kernel<T>, n), kThreads, 0, stream>>>(
        static_cast<const T*>(gates), static_cast<const T*>(hn), static_cast<const T*>(h_prev),
        static_cast<const T*>(dy), static_cast<const T*>(dh_next), static_cast<T*>(dxg), static_cast<T*>(dhg),
        static_cast<T*>(dh_prev), batch, hidden);
  });
}

}  // namespace gpunet
