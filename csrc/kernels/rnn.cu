// rnn.cu -- the elementwise part of one LSTM / GRU / Elman RNN step, fused into one
// kernel per direction. The Python glue (gpunet/ops/rnn.py) runs a layer as:
// ONE cuBLAS GEMM for every timestep's input projection x W_ih^T (+ b_ih),
// then per step one GEMM h_{t-1} W_hh^T and one cell kernel; backward per step
// one cell-backward kernel and one GEMM dgates W_hh, and the weight gradients
// as one GEMM each over all timesteps.
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
#include "kernels/rnn.h"

namespace gpunet {
namespace {

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

__global__ void __launch_bounds__(kThreads)
    lstm_cell_forward_kernel(const float* xg, const float* __restrict__ hg, const float* __restrict__ b_hh,
                             const float* __restrict__ c_prev, float* gates, float* __restrict__ h,
                             float* __restrict__ c, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 4 * hidden + j;  // column j of gate block i in row b
    float pre[4];
    for (int k = 0; k < 4; ++k) {
      pre[k] = xg[row + k * hidden] + hg[row + k * hidden];
      if (b_hh != nullptr) pre[k] += b_hh[k * hidden + j];
    }
    const float i = sigmoidf(pre[0]), f = sigmoidf(pre[1]), g = tanhf(pre[2]), o = sigmoidf(pre[3]);
    const float cn = f * c_prev[e] + i * g;
    gates[row] = i;
    gates[row + hidden] = f;
    gates[row + 2 * hidden] = g;
    gates[row + 3 * hidden] = o;
    c[e] = cn;
    h[e] = o * tanhf(cn);
  }
}

__global__ void __launch_bounds__(kThreads)
    lstm_cell_backward_kernel(const float* __restrict__ gates, const float* __restrict__ c_prev,
                              const float* __restrict__ c, const float* __restrict__ dy,
                              const float* __restrict__ dh_next, const float* dc_next, float* __restrict__ dgates,
                              float* dc_prev, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 4 * hidden + j;
    const float i = gates[row], f = gates[row + hidden], g = gates[row + 2 * hidden], o = gates[row + 3 * hidden];
    const float dh = (dy != nullptr ? dy[e] : 0.f) + (dh_next != nullptr ? dh_next[e] : 0.f);
    const float tc = tanhf(c[e]);
    const float dc = (dc_next != nullptr ? dc_next[e] : 0.f) + dh * o * (1.f - tc * tc);
    dgates[row] = dc * g * i * (1.f - i);
    dgates[row + hidden] = dc * c_prev[e] * f * (1.f - f);
    dgates[row + 2 * hidden] = dc * i * (1.f - g * g);
    dgates[row + 3 * hidden] = dh * tc * o * (1.f - o);
    dc_prev[e] = dc * f;
  }
}

__global__ void __launch_bounds__(kThreads)
    rnn_cell_forward_kernel(const float* xg, const float* __restrict__ hg, const float* __restrict__ b_hh, float* h,
                            int64_t n, int64_t hidden, bool relu) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    float v = xg[e] + hg[e];
    if (b_hh != nullptr) v += b_hh[e % hidden];
    h[e] = relu ? (v <= 0.f ? 0.f : v) : tanhf(v);  // relu written so that NaN propagates
  }
}

__global__ void __launch_bounds__(kThreads)
    rnn_cell_backward_kernel(const float* __restrict__ h, const float* __restrict__ dy,
                             const float* __restrict__ dh_next, float* __restrict__ dpre, int64_t n, bool relu) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const float d = (dy != nullptr ? dy[e] : 0.f) + (dh_next != nullptr ? dh_next[e] : 0.f);
    const float y = h[e];
    dpre[e] = relu ? (y > 0.f ? d : 0.f) : d * (1.f - y * y);
  }
}

__global__ void __launch_bounds__(kThreads)
    gru_cell_forward_kernel(const float* xg, const float* __restrict__ hg, const float* __restrict__ b_hh,
                            const float* __restrict__ h_prev, float* gates, float* __restrict__ hn,
                            float* __restrict__ h, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 3 * hidden + j;  // column j of gate block r in row b
    float rec[3];
    for (int k = 0; k < 3; ++k) rec[k] = hg[row + k * hidden] + (b_hh != nullptr ? b_hh[k * hidden + j] : 0.f);
    const float r = sigmoidf(xg[row] + rec[0]);
    const float z = sigmoidf(xg[row + hidden] + rec[1]);
    const float nn = tanhf(xg[row + 2 * hidden] + r * rec[2]);
    gates[row] = r;
    gates[row + hidden] = z;
    gates[row + 2 * hidden] = nn;
    hn[e] = rec[2];
    h[e] = (1.f - z) * nn + z * h_prev[e];
  }
}

__global__ void __launch_bounds__(kThreads)
    gru_cell_backward_kernel(const float* __restrict__ gates, const float* __restrict__ hn,
                             const float* __restrict__ h_prev, const float* __restrict__ dy,
                             const float* __restrict__ dh_next, float* __restrict__ dxg, float* __restrict__ dhg,
                             float* __restrict__ dh_prev, int64_t batch, int64_t hidden) {
  const int64_t n = batch * hidden;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const int64_t row = b * 3 * hidden + j;
    const float r = gates[row], z = gates[row + hidden], nn = gates[row + 2 * hidden];
    const float dh = (dy != nullptr ? dy[e] : 0.f) + (dh_next != nullptr ? dh_next[e] : 0.f);
    const float dn = dh * (1.f - z) * (1.f - nn * nn);
    const float dz = dh * (h_prev[e] - nn) * z * (1.f - z);
    const float dr = dn * hn[e] * r * (1.f - r);
    dxg[row] = dr;
    dxg[row + hidden] = dz;
    dxg[row + 2 * hidden] = dn;
    dhg[row] = dr;
    dhg[row + hidden] = dz;
    dhg[row + 2 * hidden] = dn * r;
    dh_prev[e] = dh * z;
  }
}

}  // namespace

void lstm_cell_forward(const float* xg, const float* hg, const float* b_hh, const float* c_prev, float* gates,
                       float* h, float* c, int64_t batch, int64_t hidden, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  lstm_cell_forward_kernel<<<grid_for(lstm_cell_forward_kernel, n), kThreads, 0, stream>>>(xg, hg, b_hh, c_prev,
                                                                                           gates, h, c, batch, hidden);
}

void lstm_cell_backward(const float* gates, const float* c_prev, const float* c, const float* dy,
                        const float* dh_next, const float* dc_next, float* dgates, float* dc_prev, int64_t batch,
                        int64_t hidden, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  lstm_cell_backward_kernel<<<grid_for(lstm_cell_backward_kernel, n), kThreads, 0, stream>>>(
      gates, c_prev, c, dy, dh_next, dc_next, dgates, dc_prev, batch, hidden);
}

void rnn_cell_forward(const float* xg, const float* hg, const float* b_hh, float* h, int64_t batch, int64_t hidden,
                      bool relu, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  rnn_cell_forward_kernel<<<grid_for(rnn_cell_forward_kernel, n), kThreads, 0, stream>>>(xg, hg, b_hh, h, n, hidden,
                                                                                         relu);
}

void rnn_cell_backward(const float* h, const float* dy, const float* dh_next, float* dpre, int64_t batch,
                       int64_t hidden, bool relu, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  rnn_cell_backward_kernel<<<grid_for(rnn_cell_backward_kernel, n), kThreads, 0, stream>>>(h, dy, dh_next, dpre, n,
                                                                                          relu);
}

void gru_cell_forward(const float* xg, const float* hg, const float* b_hh, const float* h_prev, float* gates,
                      float* hn, float* h, int64_t batch, int64_t hidden, cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  gru_cell_forward_kernel<<<grid_for(gru_cell_forward_kernel, n), kThreads, 0, stream>>>(xg, hg, b_hh, h_prev, gates,
                                                                                      hn, h, batch, hidden);
}

void gru_cell_backward(const float* gates, const float* hn, const float* h_prev, const float* dy,
                       const float* dh_next, float* dxg, float* dhg, float* dh_prev, int64_t batch, int64_t hidden,
                       cudaStream_t stream) {
  const int64_t n = batch * hidden;
  if (n == 0) return;
  gru_cell_backward_kernel<<<grid_for(gru_cell_backward_kernel, n), kThreads, 0, stream>>>(
      gates, hn, h_prev, dy, dh_next, dxg, dhg, dh_prev, batch, hidden);
}

}  // namespace gpunet
