// rnn.h -- host API of csrc/kernels/rnn.cu: the elementwise steps of the
// LSTM, GRU and Elman RNN cells (algorithms there). The GEMMs of a step are
// cuBLAS calls made by the Python glue (gpunet/ops/rnn.py).
//
// All arrays are C-contiguous, of one storage type (float32, float16 or
// bfloat16; computed in float32, each result rounded once), in device memory. B = batch, H = hidden
// size; gate blocks in a (B, 4H) row are ordered i, f, g, o as in PyTorch.
// Pointers documented as optional may be nullptr (meaning zero).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/storage.h"

namespace gpunet {

// One LSTM step, given xg = x_t W_ih^T + b_ih and hg = h_{t-1} W_hh^T, both (B, 4H):
//   (i, f, g, o) = (sigmoid, sigmoid, tanh, sigmoid)(xg + hg + b_hh)
//   c = f * c_prev + i * g,  h = o * tanh(c)
// Writes the activated gates (B, 4H; may alias xg), h and c (B, H).
// b_hh (4H) is optional.
void lstm_cell_forward(Storage storage, const void* xg, const void* hg, const void* b_hh, const void* c_prev,
                       void* gates, void* h, void* c, int64_t batch, int64_t hidden, cudaStream_t stream);

// Backward of one LSTM step: with dh = dy + dh_next and dc = dc_next (each
// optional), writes the pre-activation gate gradients dgates (B, 4H) and
// dc_prev (B, H; may alias dc_next). tanh(c) is recomputed, not stored.
void lstm_cell_backward(Storage storage, const void* gates, const void* c_prev, const void* c, const void* dy,
                        const void* dh_next, const void* dc_next, void* dgates, void* dc_prev, int64_t batch,
                        int64_t hidden, cudaStream_t stream);

// One Elman RNN step: h = act(xg + hg + b_hh), act = relu or tanh, all (B, H);
// h may alias xg, b_hh (H) is optional.
void rnn_cell_forward(Storage storage, const void* xg, const void* hg, const void* b_hh, void* h, int64_t batch,
                      int64_t hidden, bool relu, cudaStream_t stream);

// dpre = (dy + dh_next) * act'(h), act' from the step's output h; dy and
// dh_next optional.
void rnn_cell_backward(Storage storage, const void* h, const void* dy, const void* dh_next, void* dpre,
                       int64_t batch, int64_t hidden, bool relu, cudaStream_t stream);

// One GRU step (gate blocks r, z, n as in PyTorch), given xg = x W_ih^T + b_ih
// and hg = h_prev W_hh^T, both (B, 3H):
//   r = sigmoid(xg_r + hg_r + b_hr), z = sigmoid(xg_z + hg_z + b_hz)
//   hn = hg_n + b_hn, n = tanh(xg_n + r * hn), h = (1 - z) * n + z * h_prev
// Writes the activated gates r, z, n (B, 3H; may alias xg), hn and h (B, H).
// b_hh (3H) is optional.
void gru_cell_forward(Storage storage, const void* xg, const void* hg, const void* b_hh, const void* h_prev,
                      void* gates, void* hn, void* h, int64_t batch, int64_t hidden, cudaStream_t stream);

// Backward of one GRU step: with dh = dy + dh_next (each optional), writes
// the gradients of the input projection's pre-activations dxg (B, 3H), of the
// recurrent GEMM's output dhg (B, 3H; the n block is dxg's times r) and the
// direct part of dh_prev, dh * z (B, H); dh_prev = dhg W_hh + that.
void gru_cell_backward(Storage storage, const void* gates, const void* hn, const void* h_prev, const void* dy,
                       const void* dh_next, void* dxg, void* dhg, void* dh_prev, int64_t batch, int64_t hidden,
                       cudaStream_t stream);

}  // namespace gpunet
