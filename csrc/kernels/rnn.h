// rnn.h -- host API of csrc/kernels/rnn.cu: the elementwise steps of the
// LSTM, GRU and Elman RNN cells (algorithms there). The GEMMs of a step are
// cuBLAS calls made by the Python glue (gpunet/ops/rnn.py).
//
// All arrays are C-contiguous float32 in device memory. B = batch, H = hidden
// size; gate blocks in a (B, 4H) row are ordered i, f, g, o as in PyTorch.
// Pointers documented as optional may be nullptr (meaning zero).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

// One LSTM step, given xg = x_t W_ih^T + b_ih and hg = h_{t-1} W_hh^T, both (B, 4H):
//   (i, f, g, o) = (sigmoid, sigmoid, tanh, sigmoid)(xg + hg + b_hh)
//   c = f * c_prev + i * g,  h = o * tanh(c)
// Writes the activated gates (B, 4H; may alias xg), h and c (B, H).
// b_hh (4H) is optional.
void lstm_cell_forward(const float* xg, const float* hg, const float* b_hh, const float* c_prev, float* gates,
                       float* h, float* c, int64_t batch, int64_t hidden, cudaStream_t stream);

// Backward of one LSTM step: with dh = dy + dh_next and dc = dc_next (each
// optional), writes the pre-activation gate gradients dgates (B, 4H) and
// dc_prev (B, H; may alias dc_next). tanh(c) is recomputed, not stored.
void lstm_cell_backward(const float* gates, const float* c_prev, const float* c, const float* dy,
                        const float* dh_next, const float* dc_next, float* dgates, float* dc_prev, int64_t batch,
                        int64_t hidden, cudaStream_t stream);

// One Elman RNN step: h = act(xg + hg + b_hh), act = relu or tanh, all (B, H);
// h may alias xg, b_hh (H) is optional.
void rnn_cell_forward(const float* xg, const float* hg, const float* b_hh, float* h, int64_t batch, int64_t hidden,
                      bool relu, cudaStream_t stream);

// dpre = (dy + dh_next) * act'(h), act' from the step's output h; dy and
// dh_next optional.
void rnn_cell_backward(const float* h, const float* dy, const float* dh_next, float* dpre, int64_t batch,
                       int64_t hidden, bool relu, cudaStream_t stream);

// One GRU step (gate blocks r, z, n as in PyTorch), given xg = x W_ih^T + b_ih
// and hg = h_prev W_hh^T, both (B, 3H):
//   r = sigmoid(xg_r + hg_r + b_hr), z = sigmoid(xg_z + hg_z + b_hz)
//   hn = hg_n + b_hn, n = tanh(xg_n + r * hn), h = (1 - z) * n + z * h_prev
// Writes the activated gates r, z, n (B, 3H; may alias xg), hn and h (B, H).
// b_hh (3H) is optional.
void gru_cell_forward(const float* xg, const float* hg, const float* b_hh, const float* h_prev, float* gates,
                      float* hn, float* h, int64_t batch, int64_t hidden, cudaStream_t stream);

// Backward of one GRU step: with dh = dy + dh_next (each optional), writes
// the gradients of the input projection's pre-activations dxg (B, 3H), of the
// recurrent GEMM's output dhg (B, 3H; the n block is dxg's times r) and the
// direct part of dh_prev, dh * z (B, H); dh_prev = dhg W_hh + that.
void gru_cell_backward(const float* gates, const float* hn, const float* h_prev, const float* dy,
                       const float* dh_next, float* dxg, float* dhg, float* dh_prev, int64_t batch, int64_t hidden,
                       cudaStream_t stream);

}  // namespace gpunet
