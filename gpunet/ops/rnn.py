"""Recurrent layers: the Elman RNN, the LSTM and the GRU, one layer over a whole sequence.

Layout: x (T, B, I) time-major, states (B, H); weights as PyTorch: w_ih (G·H, I),
w_hh (G·H, H), biases (G·H,), with G = 4 gate blocks in the order i, f, g, o for
the LSTM, G = 3 in the order r, z, n for the GRU, and G = 1 for the RNN.

    forward   ONE GEMM x (T·B, I) @ w_ih^T for every timestep's input projection,
              then per step one GEMM h_{t-1} @ w_hh^T and the elementwise cell
    backward  per step the elementwise cell backward (-> pre-activation gate
              gradients dG_t) and one GEMM dG_t @ w_hh for dh_{t-1}; at the end
              ONE GEMM each for dx = dG w_ih, dw_ih = dG^T x, dw_hh = dG^T h_prev
              over all timesteps, and one reduction for the biases

On the "array" dispatch path the cell is array code on be.xp (both biases
are folded into the input projection); the "fused" path (CuPy) runs the same
formulas as one ElementwiseKernel per step and direction (below); the
"kernel" path (sim, cuda; float32 and half storage) is one fused kernel per step
(csrc/kernels/rnn.cu), which adds b_hh itself. The cell saves the activated
gates in place of the input projection, and the LSTM keeps every c_t and h_t.
The GRU has the kernel and array paths only (no CuPy fusion yet). On the
host a float32 LSTM's array path is one compiled pass per step each way
(gpunet/hostlib.py), the recurrent product and the cell together per block
of hidden units (the weights packed once per sequence): the products in
their own summation order, the backward cell the array code's operations
(the same bits), the forward's sigmoid and tanh a few ulps from the array
code's.

Half storage (bfloat16, float16) on cpu: gpunet.ops.half's float32_compute
(inputs, weights and states read in float32, the whole recurrence in float32,
each output, final state and gradient rounded once). On the kernel backends
the cell kernels run on the half arrays (float32 inside, each output rounded
once, so h and c are rounded at every step) and the GEMMs go through
linear.matmul (float32 accumulation, rounded once).
"""
import functools

import numpy as np

from .. import hostlib
from . import host_threads
from .cupy_kernels import cupy
from .half import float32_compute, kernel_view
from .linear import bias_add, bias_grad, half_kernels, matmul, route_of

NONLINEARITIES = ("tanh", "relu")


# ---------------------------------------------------------------- helpers
def _layer_forward(op: str):
    """float32_compute for a layer forward returning (*outputs, ctx)."""
    def wrap(fn):
        @float32_compute(op, forward=True, half_kernels=half_kernels)
        def outputs_and_ctx(be, *args, **kwargs):
            *outputs, ctx = fn(be, *args, **kwargs)
            return tuple(outputs), ctx

        @functools.wraps(fn)
        def run(be, *args, **kwargs):
            outputs, ctx = outputs_and_ctx(be, *args, **kwargs)
            return (*outputs, ctx)
        return run
    return wrap


def _cell(be, kernel: str, *args):
    """be.kernels.<kernel>(*args, stream), arrays as the kernels take them."""
    getattr(be.kernels, kernel)(*(kernel_view(be, a) if hasattr(a, "dtype") else a for a in args), be.stream())


def _sigmoid_(xp, v):
    """v <- sigmoid(v) in place, as 0.5·tanh(v/2) + 0.5 (no exp overflow)."""
    xp.multiply(v, 0.5, out=v)
    xp.tanh(v, out=v)
    v *= 0.5
    v += 0.5


def _recurrent_weight(be, w_hh):
    """w_hh^T for the per-step GEMMs h_{t-1} @ w_hh^T. On the host a
    C-contiguous copy, made once per sequence: OpenBLAS multiplies a few rows
    by it about 1.5x faster than by the transposed view (a (32, 256) @ (256,
    1024) step: 161 against 245 us on one thread)."""
    return w_hh.T if be.on_gpu else be.xp.ascontiguousarray(w_hh.T)


def _input_projection(be, route, x2, w_ih, b_ih, b_hh):
    """(T·B, G·H) = x2 @ w_ih^T plus the biases `route` folds in here."""
    g = matmul(be, x2, w_ih.T)
    if b_ih is not None:
        if route == "kernel":
            bias_add(be, g, b_ih, route)  # b_hh is added by the cell kernel
        else:
            g += b_ih + b_hh
    return g


def _weight_grads(be, route, dG, x2, hs, w_ih, has_bias):
    """The per-sequence GEMMs of backward: dx, dw_ih, dw_hh and the bias grads."""
    T, B, GH = dG.shape
    dG2 = dG.reshape(T * B, GH)
    dx = matmul(be, dG2, w_ih).reshape(T, B, w_ih.shape[1])
    dw_ih = matmul(be, dG2.T, x2)
    dw_hh = matmul(be, dG2.T, hs[:T].reshape(T * B, hs.shape[-1]))
    db = bias_grad(be, dG2, GH, route) if has_bias else None
    return dx, dw_ih, dw_hh, db


# ---------------------------------------------------------------- LSTM
@_layer_forward("lstm")
def lstm_forward(be, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=None):
    """One LSTM layer. x (T, B, I), h0 (B, R) and c0 (B, H); biases both given
    or both None. w_hr (R, H): PyTorch's proj_size, h_t = w_hr (o * tanh(c_t))
    (R = H without it). Returns (out (T, B, R), h_n, c_n, ctx); out is a view
    of the saved states."""
    route = route_of(be, "lstm", x.dtype, fused=True)
    xp = be.xp
    T, B, _ = x.shape
    H, R = w_ih.shape[0] // 4, w_hh.shape[1]
    x2 = x.reshape(T * B, x.shape[2])  # not -1: B may be 0
    lib = _host_lib(be, route, x)
    if lib is None:
        gates = _input_projection(be, route, x2, w_ih, b_ih, b_hh).reshape(T, B, 4 * H)
    else:  # the compiled steps project x_t themselves
        gates, x2 = np.empty((T, B, 4 * H), np.float32), np.ascontiguousarray(x2)
    hs = xp.empty((T + 1, B, R), dtype=x.dtype)
    cs = xp.empty((T + 1, B, H), dtype=x.dtype)
    raw = None if w_hr is None else xp.empty((T, B, H), dtype=x.dtype)  # o * tanh(c), before the projection
    hs[0] = h0
    cs[0] = c0
    tanh_c = None if route == "kernel" else xp.empty((T, B, H), dtype=x.dtype)
    if lib is not None:
        _lstm_forward_compiled(be, lib, x2, w_ih, w_hh, b_ih, b_hh, w_hr, gates, hs, cs, tanh_c, raw)
    else:
        _lstm_forward_steps(be, route, w_hh, b_hh, w_hr, gates, hs, cs, tanh_c, raw)
    ctx = (route, x2, hs, cs, gates, tanh_c, raw, b_ih is not None)
    return hs[1:], hs[T], cs[T], ctx


def _lstm_forward_steps(be, route, w_hh, b_hh, w_hr, gates, hs, cs, tanh_c, raw):
    """lstm_forward's recurrence a step at a time: the product through
    matmul, the cell by route (a kernel, a CuPy fusion or array code)."""
    xp = be.xp
    H = cs.shape[2]
    w_hh_t = _recurrent_weight(be, w_hh)
    for t in range(gates.shape[0]):
        h = hs[t + 1] if raw is None else raw[t]
        if route == "kernel":
            hg = matmul(be, hs[t], w_hh_t)
            _cell(be, "lstm_cell_forward", gates[t], hg, b_hh, cs[t], gates[t], h, cs[t + 1])
        elif route == "fused":
            _fused_cell_forward(gates[t], matmul(be, hs[t], w_hh_t), cs[t], cs[t + 1], tanh_c[t], h)
        else:
            g = gates[t]
            g += matmul(be, hs[t], w_hh_t)
            _sigmoid_(xp, g[:, :2 * H])
            xp.tanh(g[:, 2 * H:3 * H], out=g[:, 2 * H:3 * H])
            _sigmoid_(xp, g[:, 3 * H:])
            i, f, gg, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            xp.multiply(f, cs[t], out=cs[t + 1])
            cs[t + 1] += i * gg
            xp.tanh(cs[t + 1], out=tanh_c[t])
            xp.multiply(o, tanh_c[t], out=h)
        if raw is not None:
            matmul(be, raw[t], w_hr.T, out=hs[t + 1])


@float32_compute("lstm", forward=False, half_kernels=half_kernels)
def lstm_backward(be, ctx, w_ih, w_hh, dout, dh_n, dc_n, w_hr=None, state_grad=True):
    """Backward through time of one LSTM layer. dout (T, B, R), dh_n (B, R),
    dc_n (B, H); any of them may be None (zero). Returns dx, dh0, dc0, dw_ih,
    dw_hh, db, dw_hr where db is the gradient of b_ih and of b_hh alike (None
    without biases) and dw_hr None without a projection. state_grad=False:
    the initial state needs no gradient (it was not given), dh0 and dc0 are
    None and the last step's recurrent product is not computed."""
    route, x2, hs, cs, gates, tanh_c, raw, has_bias = ctx
    lib = _host_lib(be, route, gates)
    if lib is not None:
        return _lstm_backward_compiled(be, lib, ctx, w_ih, w_hh, dout, dh_n, dc_n, w_hr, state_grad)
    xp = be.xp
    T, B, H4 = gates.shape
    H = H4 // 4
    dG = xp.empty_like(gates)
    # the kernel updates dc in place in this buffer (never in the caller's dc_n)
    dc_buf = xp.empty((B, H), dtype=gates.dtype) if route == "kernel" else None
    dproj = None if raw is None else xp.empty((T,) + hs.shape[1:], dtype=gates.dtype)
    dh, dc = dh_n, dc_n
    for t in range(T - 1, -1, -1):
        dy = None if dout is None else dout[t]
        if raw is not None:  # through the projection: the cell sees d(o * tanh(c)) alone
            dproj[t] = _sum_or_zeros(xp, dy, dh, hs[t + 1])
            dy, dh = matmul(be, dproj[t], w_hr), None
        if route == "kernel":
            _cell(be, "lstm_cell_backward", gates[t], cs[t], cs[t + 1], dy, dh, dc, dG[t], dc_buf)
            dc = dc_buf
        elif route == "fused":
            dc = _fused_cell_backward(gates[t], cs[t], tanh_c[t], dy, dh, dc, dG[t])
        else:
            dc = _lstm_cell_backward_xp(xp, gates[t], cs[t], tanh_c[t], dy, dh, dc, dG[t])
        dh = matmul(be, dG[t], w_hh) if t or state_grad else None
    dx, dw_ih, dw_hh, db = _weight_grads(be, route, dG, x2, hs, w_ih, has_bias)
    dw_hr = None if raw is None else matmul(be, dproj.reshape(-1, dproj.shape[-1]).T, raw.reshape(-1, H))
    return dx, dh, dc if state_grad else None, dw_ih, dw_hh, db, dw_hr


def _host_lib(be, route, a):
    """The compiled host steps (gpunet/hostlib.py) of a float32 LSTM on the
    array path on the host (a: its input or gates), else None (NumPy code)."""
    return hostlib.for_float32(be, a) if route == "array" else None


def _step_addresses(*arrays):
    """For C-contiguous (steps, ...) arrays: functions t -> the address of a[t]."""
    return [lambda t, base=a.ctypes.data, step=a.strides[0]: base + t * step for a in arrays]


def _packed(pack, weights, dims, blocks, per_block):
    """Weights packed into the compiled steps' panels by pack(*weights, out,
    *dims, lo, hi): `blocks` panels of per_block floats, on a 64-byte boundary
    (whole cache lines per vector load)."""
    buf = np.empty(blocks * per_block + 16, np.float32)
    out = buf[(-buf.ctypes.data % 64) // 4:][:blocks * per_block]
    weights = [np.ascontiguousarray(w, np.float32) for w in weights]
    host_threads.run_compiled(pack, (*(w.ctypes.data for w in weights), out.ctypes.data, *dims),
                              host_threads.ranges(blocks, per_block))
    return out


def _sequence_parts(parts):
    """(bounds as int64, count) of the parts a compiled sequence call splits
    each step into: one part where the compiled pool is not there."""
    if len(parts) > 1 and not host_threads.pool_ready():
        parts = [(parts[0][0], parts[-1][1])]
    return np.array([lo for lo, _ in parts] + [parts[-1][1]], np.int64), len(parts)


def _lstm_forward_compiled(be, lib, x2, w_ih, w_hh, b_ih, b_hh, w_hr, gates, hs, cs, tanh_c, raw):
    """lstm_forward's recurrence on the compiled steps, per step one pass for
    each block of 16 hidden units: all T steps in one call without a
    projection; with one, a step at a time, the projection a matmul between."""
    T, B, H4 = gates.shape
    H, I, R = H4 // 4, x2.shape[1], hs.shape[2]
    wp = _packed(lib.gpunet_lstm_pack_forward_f32, (w_ih, w_hh), (H, I, R), -(-H // 16), 64 * (I + R))
    b = None if b_ih is None else np.ascontiguousarray(b_ih + b_hh, np.float32)
    blocks = host_threads.ranges(-(-H // 16), B * (4 * (I + R) + 80), host_threads.MIN_PER_EXP_THREAD)
    if raw is None:
        bounds, parts = _sequence_parts(blocks)
        dims = np.array([B, H, I, R, T], np.int64)
        lib.gpunet_lstm_forward_f32(*(hostlib.ptr(a) for a in (gates, x2, hs, wp, b, cs, tanh_c, dims, bounds)),
                                    parts)
        return
    dims = np.array([B, H, I, R], np.int64)
    at = _step_addresses(gates, x2.reshape(T, B, I), hs, cs, tanh_c, raw)  # the arrays' addresses as integers
    for t in range(T):
        host_threads.run_compiled(lib.gpunet_lstm_step_forward_f32,
                                  (at[0](t), at[1](t), at[2](t), hostlib.ptr(wp), hostlib.ptr(b), at[3](t),
                                   at[3](t + 1), at[4](t), at[5](t), hostlib.ptr(dims)), blocks)
        matmul(be, raw[t], w_hr.T, out=hs[t + 1])


def _lstm_backward_compiled(be, lib, ctx, w_ih, w_hh, dout, dh_n, dc_n, w_hr, state_grad):
    """lstm_backward on the compiled steps, per step one pass for each block
    of 64 hidden units: d = dy + dG_{t+1} w_hh and the cell, all T steps in
    one call without a projection; with one, a step at a time, the product
    and the projection matmuls and the pass the cell alone."""
    _, x2, hs, cs, gates, tanh_c, raw, has_bias = ctx
    T, B, H4 = gates.shape
    H = H4 // 4
    dG = np.empty_like(gates)
    dc_bufs = np.empty((2, B, H), np.float32)  # dc_prev of each step, alternately (never the caller's dc_n)
    dout = None if dout is None else np.ascontiguousarray(dout, np.float32)
    dc = None if dc_n is None else np.ascontiguousarray(dc_n, np.float32)
    blocks = host_threads.ranges(-(-H // 64), B * (16 * H + 128), host_threads.MIN_PER_EXP_THREAD)
    if raw is None:
        wb = _packed(lib.gpunet_lstm_pack_backward_f32, (w_hh,), (H,), -(-H // 64), 64 * 4 * H)
        bounds, parts = _sequence_parts(blocks)
        dims = np.array([B, H, x2.shape[1], H, T], np.int64)
        dh = None if dh_n is None else np.ascontiguousarray(dh_n, np.float32)
        lib.gpunet_lstm_backward_f32(*(hostlib.ptr(a) for a in (dG, wb, gates, cs, tanh_c, dout, dh, dc, dc_bufs,
                                                                dims, bounds)), parts)
        dh, dc = (matmul(be, dG[0], w_hh), dc_bufs[0]) if state_grad else (None, None)
        dw_hr = None
    else:
        dproj = np.empty((T,) + hs.shape[1:], np.float32)
        dh, dc = _lstm_backward_projected(be, lib, ctx, dG, dc_bufs, dproj, dout, dh_n, dc, w_hh, w_hr, blocks,
                                          state_grad)
        dw_hr = matmul(be, dproj.reshape(-1, dproj.shape[-1]).T, raw.reshape(-1, H))
    dx, dw_ih, dw_hh, db = _weight_grads(be, "array", dG, x2, hs, w_ih, has_bias)
    return dx, dh, dc, dw_ih, dw_hh, db, dw_hr


def _lstm_backward_projected(be, lib, ctx, dG, dc_bufs, dproj, dout, dh, dc, w_hh, w_hr, blocks, state_grad):
    """The steps of _lstm_backward_compiled with a projection, one call each;
    fills dG and dproj (the gradients reaching h_t before the projection),
    returns dh0 and dc0 (None, None without state_grad)."""
    _, _, hs, cs, gates, tanh_c, _, _ = ctx
    T, B, H4 = gates.shape
    at = _step_addresses(gates, cs, tanh_c, dG, dc_bufs)  # the arrays' addresses as integers
    for t in range(T - 1, -1, -1):  # the cell sees d(o * tanh(c)) alone
        dproj[t] = _sum_or_zeros(np, None if dout is None else dout[t], dh, hs[t + 1])
        dy = matmul(be, dproj[t], w_hr)
        host_threads.run_compiled(lib.gpunet_lstm_step_backward_f32,
                                  (None, None, at[0](t), at[1](t), at[2](t), hostlib.ptr(dy), hostlib.ptr(dc),
                                   at[3](t), at[4](t % 2), B, H4 // 4), blocks)
        dc = dc_bufs[t % 2]
        dh = matmul(be, dG[t], w_hh) if t or state_grad else None
    return (dh, dc) if state_grad else (None, None)


def _lstm_cell_backward_xp(xp, g, c_prev, tanh_c, dy, dh, dc, dg):
    """One step of LSTM backward as array code: writes the pre-activation gate
    gradients into dg (B, 4H) and returns dc_prev. dy, dh, dc may be None."""
    H = c_prev.shape[-1]
    i, f, gg, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
    dh = _sum_or_zeros(xp, dy, dh, c_prev)
    dc_t = dh * o * (1 - tanh_c * tanh_c)
    if dc is not None:
        dc_t += dc
    xp.multiply(dh * tanh_c, o * (1 - o), out=dg[:, 3 * H:])
    xp.multiply(dc_t * gg, i * (1 - i), out=dg[:, :H])
    xp.multiply(dc_t * c_prev, f * (1 - f), out=dg[:, H:2 * H])
    xp.multiply(dc_t * i, 1 - gg * gg, out=dg[:, 2 * H:3 * H])
    return dc_t * f


# The CuPy fusion of the cell. Gates (B, 4H) in PyTorch's order i, f, g, o; the
# loop runs over (b, j) in (B, H) and touches column j of each of the four
# blocks of row b.
_LSTM_INDEX = "const ptrdiff_t b = i / H, j = i % H, at = b * 4 * H + j;"


@functools.cache
def _fused_cell_kernels():
    cp = cupy()
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


def _fused_cell_forward(gates, hg, c_prev, c, tanh_c, h):
    """One step of lstm_forward's array path in one pass: gates (B, 4H) hold the
    input projection with both biases and are overwritten with the activated
    gates; writes c, tanh(c) and h (B, H). gates and hg must be C-contiguous."""
    _fused_cell_kernels()[0](hg, c_prev, c_prev.shape[-1], gates, c, tanh_c, h)


def _fused_cell_backward(gates, c_prev, tanh_c, dy, dh, dc, dg):
    """_lstm_cell_backward_xp in one pass: writes the pre-activation gate
    gradients into dg (B, 4H, C-contiguous) and returns dc_prev. dy, dh, dc may
    be None (zero)."""
    cp = cupy()
    zero = cp.zeros((), dtype=gates.dtype)
    dy, dh, dc = (zero if a is None else a.astype(gates.dtype, copy=False) for a in (dy, dh, dc))
    dc_prev = cp.empty_like(c_prev)
    _fused_cell_kernels()[1](gates, c_prev, tanh_c, dy, dh, dc, c_prev.shape[-1], dg, dc_prev)
    return dc_prev


def _sum_or_zeros(xp, a, b, like):
    """a + b where either may be None (zero)."""
    if a is None and b is None:
        return xp.zeros_like(like)
    if a is None or b is None:
        return a if b is None else b
    return a + b


# ---------------------------------------------------------------- Elman RNN
@_layer_forward("rnn")
def rnn_forward(be, x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity):
    """One RNN layer h_t = act(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh), act tanh or
    relu. x (T, B, I), h0 (B, H). Returns (out (T, B, H), h_n, ctx)."""
    route = route_of(be, "rnn", x.dtype)
    xp = be.xp
    T, B, _ = x.shape
    H = w_hh.shape[1]
    relu = nonlinearity == "relu"
    x2 = x.reshape(T * B, x.shape[2])  # not -1: B may be 0
    hs = xp.empty((T + 1, B, H), dtype=x.dtype)
    hs[0] = h0
    hs[1:] = _input_projection(be, route, x2, w_ih, b_ih, b_hh).reshape(T, B, H)
    w_hh_t = _recurrent_weight(be, w_hh)
    for t in range(T):
        hg = matmul(be, hs[t], w_hh_t)
        h = hs[t + 1]
        if route == "kernel":
            _cell(be, "rnn_cell_forward", h, hg, b_hh, h, relu)
        else:
            h += hg
            if relu:
                xp.maximum(h, 0, out=h)
            else:
                xp.tanh(h, out=h)
    ctx = (route, x2, hs, relu, b_ih is not None)
    return hs[1:], hs[T], ctx


@float32_compute("rnn", forward=False, half_kernels=half_kernels)
def rnn_backward(be, ctx, w_ih, w_hh, dout, dh_n, state_grad=True):
    """Backward through time of one RNN layer; dout (T, B, H) and dh_n (B, H) may be
    None. Returns dx, dh0, dw_ih, dw_hh, db (db for b_ih and b_hh alike, or None);
    dh0 None without state_grad (as lstm_backward)."""
    xp = be.xp
    route, x2, hs, relu, has_bias = ctx
    T = hs.shape[0] - 1
    dG = xp.empty_like(hs[1:])
    dh = dh_n
    for t in range(T - 1, -1, -1):
        dy = None if dout is None else dout[t]
        h = hs[t + 1]
        if route == "kernel":
            _cell(be, "rnn_cell_backward", h, dy, dh, dG[t], relu)
        else:
            d = _sum_or_zeros(xp, dy, dh, h)
            xp.multiply(d, (h > 0) if relu else 1 - h * h, out=dG[t])
        dh = matmul(be, dG[t], w_hh) if t or state_grad else None
    dx, dw_ih, dw_hh, db = _weight_grads(be, route, dG, x2, hs, w_ih, has_bias)
    return dx, dh, dw_ih, dw_hh, db


# ---------------------------------------------------------------- GRU
@_layer_forward("gru")
def gru_forward(be, x, w_ih, w_hh, b_ih, b_hh, h0):
    """One GRU layer (gate blocks r, z, n as PyTorch):
        r = sigmoid(x w_ir^T + b_ir + h w_hr^T + b_hr), z likewise,
        n = tanh(x w_in^T + b_in + r * (h w_hn^T + b_hn)),  h' = (1 - z) n + z h.
    b_hn sits inside r's product, so b_hh is never folded into the input
    projection. x (T, B, I), h0 (B, H). Returns (out (T, B, H), h_n, ctx)."""
    route = route_of(be, "gru", x.dtype)
    xp = be.xp
    T, B, _ = x.shape
    H = w_hh.shape[1]
    x2 = x.reshape(T * B, x.shape[2])  # not -1: B may be 0
    gates = matmul(be, x2, w_ih.T)
    if b_ih is not None:
        bias_add(be, gates, b_ih, route)
    gates = gates.reshape(T, B, 3 * H)
    hs = xp.empty((T + 1, B, H), dtype=x.dtype)
    hns = xp.empty((T, B, H), dtype=x.dtype)  # h w_hn^T + b_hn, which r multiplied
    hs[0] = h0
    w_hh_t = _recurrent_weight(be, w_hh)
    for t in range(T):
        hg = matmul(be, hs[t], w_hh_t)
        g = gates[t]
        if route == "kernel":
            _cell(be, "gru_cell_forward", g, hg, b_hh, hs[t], g, hns[t], hs[t + 1])
            continue
        if b_hh is not None:
            hg += b_hh
        rz, n = g[:, :2 * H], g[:, 2 * H:]
        rz += hg[:, :2 * H]
        _sigmoid_(xp, rz)
        hns[t] = hg[:, 2 * H:]
        n += g[:, :H] * hns[t]
        xp.tanh(n, out=n)
        xp.subtract(hs[t], n, out=hs[t + 1])  # h' = n + z (h - n)
        hs[t + 1] *= g[:, H:2 * H]
        hs[t + 1] += n
    return hs[1:], hs[T], (route, x2, hs, hns, gates, b_ih is not None)


@float32_compute("gru", forward=False, half_kernels=half_kernels)
def gru_backward(be, ctx, w_ih, w_hh, dout, dh_n, state_grad=True):
    """Backward through time of one GRU layer; dout (T, B, H) and dh_n (B, H)
    may be None. Returns dx, dh0, dw_ih, dw_hh, db_ih, db_hh (biases None
    without them): b_ih and b_hh differ in the n block, where r scales b_hn.
    dh0 None without state_grad (as lstm_backward)."""
    xp = be.xp
    route, x2, hs, hns, gates, has_bias = ctx
    T, B, H3 = gates.shape
    dxg, dhg = xp.empty_like(gates), xp.empty_like(gates)
    direct = xp.empty((B, H3 // 3), dtype=gates.dtype) if route == "kernel" else None
    dh = dh_n
    for t in range(T - 1, -1, -1):
        dy = None if dout is None else dout[t]
        if route == "kernel":
            _cell(be, "gru_cell_backward", gates[t], hns[t], hs[t], dy, dh, dxg[t], dhg[t], direct)
            part = direct
        else:
            part = _gru_cell_backward_xp(xp, gates[t], hns[t], hs[t], dy, dh, dxg[t], dhg[t])
        if t or state_grad:
            dh = matmul(be, dhg[t], w_hh)
            dh += part
    dxg2, dhg2 = dxg.reshape(T * B, H3), dhg.reshape(T * B, H3)
    dx = matmul(be, dxg2, w_ih).reshape(T, B, w_ih.shape[1])
    dw_ih = matmul(be, dxg2.T, x2)
    dw_hh = matmul(be, dhg2.T, hs[:T].reshape(T * B, hs.shape[-1]))
    db_ih = bias_grad(be, dxg2, H3, route) if has_bias else None
    db_hh = bias_grad(be, dhg2, H3, route) if has_bias else None
    return dx, dh if state_grad else None, dw_ih, dw_hh, db_ih, db_hh


def _gru_cell_backward_xp(xp, g, hn, h_prev, dy, dh, dxg, dhg):
    """One step of GRU backward as array code: writes the gradients of the
    input projection's pre-activations into dxg and of the recurrent GEMM's
    output into dhg (B, 3H); returns the direct part of dh_prev, dh * z."""
    H = h_prev.shape[-1]
    r, z, n = g[:, :H], g[:, H:2 * H], g[:, 2 * H:]
    d = _sum_or_zeros(xp, dy, dh, h_prev)
    xp.multiply(d * (1 - z), 1 - n * n, out=dxg[:, 2 * H:])
    xp.multiply(d * (h_prev - n), z * (1 - z), out=dxg[:, H:2 * H])
    xp.multiply(dxg[:, 2 * H:] * hn, r * (1 - r), out=dxg[:, :H])
    dhg[:, :2 * H] = dxg[:, :2 * H]
    xp.multiply(dxg[:, 2 * H:], r, out=dhg[:, 2 * H:])
    return d * z
