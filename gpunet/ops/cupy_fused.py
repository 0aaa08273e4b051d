"""CuPy fusions for the `cupy` backend: the places where the array path would
make several passes over memory run as one CuPy-compiled kernel instead.

    activation backward   one ElementwiseKernel per activation: dx = dy * f'(x or y)
    LSTM cell             forward and backward of one timestep, one ElementwiseKernel
                          each over (B, H), reading/writing the four gate blocks
    cross-entropy         forward: a ReductionKernel for the row log-sum-exp (and one
                          for the label-smoothing sum); backward: one ElementwiseKernel
                          over (rows, C) recomputing the probabilities
    SGD, Adam/AdamW       one ElementwiseKernel launch PER PARAMETER (CuPy has no
                          multi-tensor apply; the cuda backend's kernel does one
                          launch per group)
    col2im                a RawKernel, one thread per input pixel gathering from the
                          columns (no atomics, fixed summation order)
    embedding backward    a RawKernel, one thread per (row, feature) summing that
                          row's run of the stably sorted positions in order (CuPy's
                          add.reduceat is a difference of prefix sums: inexact)

Each function computes what the array path of its op computes, from the same
formulas (the array path is the documentation); only rounding may differ:
multiply-adds the compiler contracts, and the order in which sums add their
terms (the reductions, the embedding rows). T is the arrays' dtype, so float32
and float64 both run here (on the cuda backend, float64 LSTMs and embeddings
come here through backend.array_backend, as its kernels are float32).
Kernels are built on first use: importing this module imports neither CuPy
nor compiles anything, and CuPy caches the compiled binaries (per device, and
on disk). Every kernel launches on CuPy's current stream and allocates from
its memory pool.
"""
from __future__ import annotations

import functools

import numpy as np

from .activation import _GELU_TANH_C, _INV_SQRT_2PI, _SQRT_2, _SQRT_2_OVER_PI


@functools.cache
def _cupy():
    import cupy
    return cupy


def _lit(v: float) -> str:
    """A Python float as an exact C double literal, cast to T where it is used."""
    return f"T({float(v)!r})"


# ---------------------------------------------------------------- activation backward
# kind -> (the input the derivative reads, body computing dx); alpha/beta carry
# the activation's parameters (leaky_relu: negative_slope; softplus: beta, threshold)
_SIGMOID_OF_BX = """
    const T e = exp(-fabs(bx));
    s = bx >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);"""

_ACT_BACKWARD = {
    "relu": ("x", "dx = dy * (x > T(0) ? T(1) : T(0));"),
    "leaky_relu": ("x", "dx = dy * (x > T(0) ? T(1) : alpha);"),
    "sigmoid": ("y", "dx = dy * (y * (T(1) - y));"),
    "tanh": ("y", "dx = dy * (T(1) - y * y);"),
    "softsign": ("x", "const T a = T(1) + fabs(x); dx = dy * (T(1) / (a * a));"),
    "gelu": ("x", f"""
        const T cdf = T(0.5) * erfc(-x / {_lit(_SQRT_2)});
        dx = dy * (cdf + x * {_lit(_INV_SQRT_2PI)} * exp(T(-0.5) * x * x));"""),
    "gelu_tanh": ("x", f"""
        const T th = tanh({_lit(_SQRT_2_OVER_PI)} * (x + {_lit(_GELU_TANH_C)} * x * x * x));
        const T inner = {_lit(_SQRT_2_OVER_PI)} * (T(1) + {_lit(3 * _GELU_TANH_C)} * x * x);
        dx = dy * (T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * inner);"""),
    "softplus": ("x", f"""
        const T bx = alpha * x;
        T s;
        if (bx > beta) s = T(1); else {{ {_SIGMOID_OF_BX} }}
        dx = dy * s;"""),
}


@functools.cache
def _act_backward_kernel(key: str):
    reads, body = _ACT_BACKWARD[key]
    return _cupy().ElementwiseKernel(f"T {reads}, T dy, T alpha, T beta", "T dx", body,
                                     f"gpunet_{key}_backward")


def act_backward(kind: str, params: dict, x, y, dy):
    """dx = dy * kind'(x), as activation.DERIVATIVE times dy, in one pass."""
    key = "gelu_tanh" if kind == "gelu" and params.get("approximate", "none") == "tanh" else kind
    alpha, beta = 0.0, 0.0
    if kind == "leaky_relu":
        alpha = params.get("negative_slope", 0.01)
    elif kind == "softplus":
        alpha, beta = params.get("beta", 1.0), params.get("threshold", 20.0)
    reads = x if _ACT_BACKWARD[key][0] == "x" else y
    return _act_backward_kernel(key)(reads, dy, alpha, beta)


# ---------------------------------------------------------------- LSTM cell
# Gates (B, 4H) in PyTorch's order i, f, g, o; the loop runs over (b, j) in
# (B, H) and touches column j of each of the four blocks of row b.
_LSTM_INDEX = "const ptrdiff_t b = i / H, j = i % H, at = b * 4 * H + j;"


@functools.cache
def _lstm_kernels():
    cp = _cupy()
    forward = cp.ElementwiseKernel(
        "raw T hg, T c_prev, int64 H", "raw T gates, T c, T tanh_c, T h",
        _LSTM_INDEX + """
        // pre-activations (input projection + recurrent GEMM), activated in
        // place: sigmoid(v) = tanh(v/2)/2 + 1/2 as the array path's _sigmoid_
        const T gi = tanh((gates[at] + hg[at]) * T(0.5)) * T(0.5) + T(0.5);
        const T gf = tanh((gates[at + H] + hg[at + H]) * T(0.5)) * T(0.5) + T(0.5);
        const T gg = tanh(gates[at + 2 * H] + hg[at + 2 * H]);
        const T go = tanh((gates[at + 3 * H] + hg[at + 3 * H]) * T(0.5)) * T(0.5) + T(0.5);
        gates[at] = gi; gates[at + H] = gf; gates[at + 2 * H] = gg; gates[at + 3 * H] = go;
        const T cc = gf * c_prev + gi * gg;
        c = cc;
        tanh_c = tanh(cc);
        h = go * tanh_c;""", "gpunet_lstm_cell_forward")
    backward = cp.ElementwiseKernel(
        "raw T gates, T c_prev, T tanh_c, T dy, T dh, T dc, int64 H", "raw T dg, T dc_prev",
        _LSTM_INDEX + """
        const T gi = gates[at], gf = gates[at + H], gg = gates[at + 2 * H], go = gates[at + 3 * H];
        const T d = dy + dh;
        const T dct = d * go * (T(1) - tanh_c * tanh_c) + dc;
        dg[at + 3 * H] = (d * tanh_c) * (go * (T(1) - go));
        dg[at] = (dct * gg) * (gi * (T(1) - gi));
        dg[at + H] = (dct * c_prev) * (gf * (T(1) - gf));
        dg[at + 2 * H] = (dct * gi) * (T(1) - gg * gg);
        dc_prev = dct * gf;""", "gpunet_lstm_cell_backward")
    return forward, backward


def lstm_cell_forward(gates, hg, c_prev, c, tanh_c, h):
    """One step of rnn.lstm_forward's array path: gates (B, 4H) hold the input
    projection with both biases and are overwritten with the activated gates;
    writes c, tanh(c) and h (B, H). gates and hg must be C-contiguous."""
    _lstm_kernels()[0](hg, c_prev, c_prev.shape[-1], gates, c, tanh_c, h)


def lstm_cell_backward(gates, c_prev, tanh_c, dy, dh, dc, dg):
    """rnn._lstm_cell_backward_xp in one pass: writes the pre-activation gate
    gradients into dg (B, 4H, C-contiguous) and returns dc_prev. dy, dh, dc may
    be None (zero)."""
    cp = _cupy()
    zero = cp.zeros((), dtype=gates.dtype)
    dy, dh, dc = (zero if a is None else a.astype(gates.dtype, copy=False) for a in (dy, dh, dc))
    dc_prev = cp.empty_like(c_prev)
    _lstm_kernels()[1](gates, c_prev, tanh_c, dy, dh, dc, c_prev.shape[-1], dg, dc_prev)
    return dc_prev


# ---------------------------------------------------------------- softmax cross-entropy
@functools.cache
def _ce_kernels():
    cp = _cupy()
    lse = cp.ReductionKernel("T x, T m", "T l", "exp(x - m)", "a + b", "l = log(a)", "0", "gpunet_ce_lse")
    smooth = cp.ReductionKernel("T x, T m, T l, T w", "T s", "((m - x) + l) * w", "a + b", "s = a", "0",
                                "gpunet_ce_smooth")
    backward = cp.ElementwiseKernel(
        "T x, T m, T l, T a, T w, bool valid, int64 t, T ct, T s, T e, int64 C", "T dx",
        """
        // d/dx_c sum_k a_k (lse - x_k) = (sum_k a_k) p_c - a_c
        T d = a * exp((x - m) - l) - (e * w) * (valid ? T(1) : T(0));
        if (i % C == t) d -= ct;
        dx = d * s;""", "gpunet_ce_backward")
    return lse, smooth, backward


def cross_entropy_forward(x2, ts, wt, valid, weight, label_smoothing: float):
    """Per-row losses and the (m, l) log-sum-exp pairs of loss.cross_entropy_forward
    for rows x2 (rows, C), without its (rows, C) temporaries: the row max, one
    fused exp-sum-log pass, a gather of the target logits (and one fused pass for
    the smoothing term)."""
    cp = _cupy()
    lse_kernel, smooth_kernel, _ = _ce_kernels()
    m = x2.max(axis=1, keepdims=True)
    l = lse_kernel(x2, m, axis=1, keepdims=True)
    xt = cp.take_along_axis(x2, ts[:, None], axis=1)
    per = wt * ((m - xt) + l)[:, 0]
    if label_smoothing:
        w_row = 1.0 if weight is None else weight[None, :]
        smooth = smooth_kernel(x2, m, l, w_row, axis=1) * valid
        c = x2.shape[1]
        per = (1 - label_smoothing) * per + (label_smoothing / c) * smooth
    return per, cp.concatenate([m, l], axis=1)


def cross_entropy_backward(x2, lse, ts, wt, valid, weight, eps: float, scale):
    """d loss / d x2 of loss.cross_entropy_backward in one pass over (rows, C).
    `scale` (the incoming gradient, divided for 'mean') is a number, a 0-d array
    or one value per row."""
    cp = _cupy()
    rows, c = x2.shape
    w_row = cp.ones((1, c), dtype=x2.dtype) if weight is None else weight[None, :]
    a_sum = (1 - eps) * wt + (eps / c) * w_row.sum() * valid
    ct = (1 - eps) * wt
    if hasattr(scale, "shape"):
        scale = scale.astype(x2.dtype, copy=False)
        scale = scale.reshape(rows, 1) if scale.ndim else scale
    dx2 = cp.empty_like(x2)
    _ce_kernels()[2](x2, lse[:, :1], lse[:, 1:], a_sum.astype(x2.dtype, copy=False)[:, None], w_row,
                     valid[:, None], ts[:, None], ct.astype(x2.dtype, copy=False)[:, None], scale, eps / c, c, dx2)
    return dx2


# ---------------------------------------------------------------- optimizer updates
@functools.cache
def _optim_kernels():
    cp = _cupy()
    sgd = cp.ElementwiseKernel(
        "T g, T lr, T wd, bool decay", "T p",
        """
        const T d = decay ? g + wd * p : g;
        p = p - lr * d;""", "gpunet_sgd")
    sgd_momentum = cp.ElementwiseKernel(
        "T g, T lr, T wd, bool decay, T momentum, T damp1, bool nesterov, bool fresh", "T p, T buf",
        """
        T d = decay ? g + wd * p : g;
        buf = fresh ? d : buf * momentum + damp1 * d;
        d = nesterov ? d + momentum * buf : buf;
        p = p - lr * d;""", "gpunet_sgd_momentum")
    adam = cp.ElementwiseKernel(
        "T g, T shrink, T wd, int32 mode, T omb1, T b2, T omb2, T step_size, T bc2_sqrt, T eps", "T p, T m, T v",
        """
        T d = g;
        if (mode == 1) p = p * shrink;      // AdamW: decoupled decay
        else if (mode == 2) d = g + wd * p; // Adam: L2 term in the gradient
        m = m + omb1 * (d - m);
        v = v * b2 + omb2 * d * d;
        p = p - step_size * (m / (sqrt(v) / bc2_sqrt + eps));""", "gpunet_adam")
    return sgd, sgd_momentum, adam


def sgd(params, grads, bufs, fresh, *, lr, momentum, dampening, weight_decay, nesterov):
    """optim.sgd's array path, one launch per parameter."""
    plain, with_momentum, _ = _optim_kernels()
    decay = bool(weight_decay)
    for p, g, buf, new in zip(params, grads, bufs, fresh):
        if momentum:
            with_momentum(g, lr, weight_decay, decay, momentum, 1 - dampening, bool(nesterov), bool(new), p, buf)
        else:
            plain(g, lr, weight_decay, decay, p)


def adam(params, grads, exp_avgs, exp_avg_sqs, scalars, *, lr, beta1, beta2, eps, weight_decay, decoupled):
    """optim.adam's array path, one launch per parameter; `scalars` are the
    (step_size, sqrt(bias_correction2)) pairs of optim.adam_scalars."""
    kernel = _optim_kernels()[2]
    mode = 0 if not weight_decay else 1 if decoupled else 2
    for p, g, m, v, (step_size, bc2_sqrt) in zip(params, grads, exp_avgs, exp_avg_sqs, scalars):
        kernel(g, 1 - lr * weight_decay, weight_decay, mode, 1 - beta1, beta2, 1 - beta2, step_size, bc2_sqrt, eps,
               p, m, v)


# ---------------------------------------------------------------- raw kernels
_RAW_SOURCES = {
    # dcols (C*kh*kw, N*OH*OW): row (c, i, j), column (n, oy, ox), as conv.py's
    # column layout. Input pixel (n, c, h, w) was copied to column (oy, ox) of
    # row (c, i, j) iff h + ph = oy*sh + i*dh and w + pw = ox*sw + j*dw; the
    # thread sums those entries in (i, j) row-major order, as conv._col2im_array.
    "gpunet_col2im": """
extern "C" __global__ void gpunet_col2im(const T* dcols, T* dx, long long total, int N, int C, int H, int W,
                                         int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                                         int OH, int OW) {
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(idx % W);
        long long rest = idx / W;
        const int h = (int)(rest % H);
        rest /= H;
        const int c = (int)(rest % C);
        const int n = (int)(rest / C);
        T acc = T(0);
        for (int i = 0; i < kh; ++i) {
            const int hh = h + ph - i * dh;
            if (hh < 0 || hh % sh != 0 || hh / sh >= OH) continue;
            const int oy = hh / sh;
            for (int j = 0; j < kw; ++j) {
                const int ww = w + pw - j * dw;
                if (ww < 0 || ww % sw != 0 || ww / sw >= OW) continue;
                const long long row = ((long long)c * kh + i) * kw + j;
                acc += dcols[(row * N + n) * ((long long)OH * OW) + (long long)oy * OW + ww / sw];
            }
        }
        dx[idx] = acc;
    }
}
""",
    # dw[v, d] = sum of dy[order[k], d] for k in [row_ptr[v], row_ptr[v+1]), in
    # order (the positions of row v, stably sorted); the padding row gets 0.
    "gpunet_embedding_backward": """
extern "C" __global__ void gpunet_embedding_backward(const T* dy, const long long* order, const long long* row_ptr,
                                                     T* dw, long long V, long long D, long long pad) {
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < V * D;
         idx += (long long)blockDim.x * gridDim.x) {
        const long long v = idx / D, d = idx % D;
        T acc = T(0);
        for (long long k = row_ptr[v]; k < row_ptr[v + 1]; ++k) acc += dy[order[k] * D + d];
        dw[idx] = v == pad ? T(0) : acc;
    }
}
""",
}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_BLOCK = 256
_MAX_GRID = 1 << 16  # the loops stride over the rest


@functools.cache
def _raw_kernel(name: str, dtype):
    return _cupy().RawKernel(f"typedef {_CTYPES[np.dtype(dtype)]} T;\n" + _RAW_SOURCES[name], name)


def _launch(name: str, dtype, n: int, args):
    if n:
        grid = min(-(-n // _BLOCK), _MAX_GRID)
        _raw_kernel(name, dtype)((grid,), (_BLOCK,), args)


def col2im(dcols, x_shape, g):
    """conv._col2im_array as a gather: dcols (groups, Kg, N*L) -> dx (N, C, H, W)."""
    cp = _cupy()
    n, c, h, w = x_shape
    dcols = cp.ascontiguousarray(dcols)
    dx = cp.empty(x_shape, dtype=dcols.dtype)
    i32 = np.int32
    _launch("gpunet_col2im", dx.dtype, dx.size,
            (dcols, dx, np.int64(dx.size), i32(n), i32(c), i32(h), i32(w), i32(g.kh), i32(g.kw), i32(g.sh),
             i32(g.sw), i32(g.ph), i32(g.pw), i32(g.dh), i32(g.dw), i32(g.oh), i32(g.ow)))
    return dx


def embedding_backward(dy2, order, row_ptr, dw, pad: int):
    """Fill dw (V, D) from dy2 (n, D), the stable sort order of the flat indices
    and the CSR row pointer (V + 1) of the sorted rows; pad = -1 for none."""
    cp = _cupy()
    V, D = dw.shape
    _launch("gpunet_embedding_backward", dw.dtype, V * D,
            (cp.ascontiguousarray(dy2), order.astype(np.int64, copy=False), row_ptr.astype(np.int64, copy=False),
             dw, np.int64(V), np.int64(D), np.int64(pad)))
