"""Recurrent layers: RNNCell, LSTMCell, RNN, LSTM (PyTorch's names, arguments,
parameter names, shapes and gate order i, f, g, o).

Inputs are time-major (L, N, features) unless batch_first=True (N, L, features);
an unbatched sequence (L, features) works too (cells: (N, features) or (features,)).

Backward returns gradients matching the forward's arguments: only the input
gradient when no initial state was passed, otherwise `(d_input, d_state)` with
d_state shaped like the state that was passed, e.g. LSTM:
`lstm.backward(d_output, (d_h_n, d_c_n))` -> `d_input` or `(d_input, (d_h_0, d_c_0))`;
any output gradient may be None (zero). Outputs are views of what backward
needs: do not modify them in place.

A cell called several times in one forward pass (a Python loop over time)
backpropagates through every call: call backward once per forward call, in
reverse order; the parameter gradients add up.
"""
import os

import numpy as np

from .. import checks
from ..ops import dropout as dropout_ops
from ..ops import rnn as ops
from ..random import next_philox_offset
from . import init
from .module import Module, Parameter


def _check_nonlinearity(nonlinearity):
    if nonlinearity not in ops.NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")


def _param(shape, hidden_size, dtype):
    """PyTorch's recurrent init: U(-1/sqrt(H), 1/sqrt(H)) for weights and biases."""
    return Parameter(init.fan_in_uniform(shape, hidden_size, dtype))


def _check_state(m, s, name, expected):
    """A state array of exactly the shape `expected`."""
    checks.array(m.backend, s, name, dtype=m.dtype)
    if tuple(s.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(s.shape)}")
    return s


def _check_grad(m, g, name, expected):
    """An output gradient (None means zero) of exactly the shape `expected`."""
    if g is None:
        return None
    checks.array(m.backend, g, name, dtype=m.dtype, finite=False)
    if tuple(g.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} (the output's), got {tuple(g.shape)}")
    return m.backend.xp.ascontiguousarray(g)


def _lstm_state_pair(hx, name):
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{name}: expected a pair (h, c) of arrays, got {type(hx).__name__}")
    return hx


# ---------------------------------------------------------------- cells

def _check_parameter_memory(num_layers: int, first: int, later: int, itemsize: int):
    """Refuse, before allocating anything, a stack whose parameters (first layer
    `first` elements, each further layer `later`) exceed the machine's memory:
    num_layers=2**40 must fail at once, not loop for days."""
    total = (first + (num_layers - 1) * later) * itemsize
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if total > physical:
        raise ValueError(f"num_layers={num_layers}: the parameters would take {total / 2**30:.3g} GiB, "
                         f"more than this machine's {physical / 2**30:.3g} GiB of memory")

class _Cell(Module):
    """Shared by RNNCell and LSTMCell: parameters, input checks, one step as a
    sequence of length 1 through the layer ops."""

    gates = 1

    def __init__(self, input_size, hidden_size, bias, device, dtype):
        super().__init__()
        self.input_size = checks.positive_int(input_size, "input_size")
        self.hidden_size = checks.positive_int(hidden_size, "hidden_size")
        gh = self.gates * self.hidden_size
        self.weight_ih = _param((gh, self.input_size), self.hidden_size, self.dtype)
        self.weight_hh = _param((gh, self.hidden_size), self.hidden_size, self.dtype)
        self.bias_ih = _param((gh,), self.hidden_size, self.dtype) if bias else None
        self.bias_hh = _param((gh,), self.hidden_size, self.dtype) if bias else None
        self._place(device, dtype)

    def _weights(self):
        b_ih = None if self.bias_ih is None else self.bias_ih.data
        b_hh = None if self.bias_hh is None else self.bias_hh.data
        return self.weight_ih.data, self.weight_hh.data, b_ih, b_hh

    def _input(self, x):
        """(x as a length-1 sequence (1, N, I), the state shape (N, H) or (H,))."""
        checks.array(self.backend, x, "input", ndim=(1, 2), dtype=self.dtype)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                             f"got shape {tuple(x.shape)}")
        x3 = self.backend.xp.ascontiguousarray(x.reshape((1, -1, self.input_size)))
        return x3, x.shape[:-1] + (self.hidden_size,)

    def _state(self, s, name, state_shape):
        """A state (N, H) or (H,) as given, or zeros, as a (N, H) array."""
        if s is None:
            s = self.backend.xp.zeros(state_shape, dtype=self.dtype)
        return _check_state(self, s, name, state_shape).reshape(-1, self.hidden_size)

    def _accumulate(self, dw_ih, dw_hh, db_ih, db_hh=None):
        """db_hh None: the same gradient as b_ih (the LSTM's and RNN's biases are
        added together; the GRU's are not)."""
        self.weight_ih.accumulate(dw_ih)
        self.weight_hh.accumulate(dw_hh)
        if db_ih is not None:
            self.bias_ih.accumulate(db_ih)
            self.bias_hh.accumulate(db_ih.copy() if db_hh is None else db_hh)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class _ElmanSteps:
    """The Elman layer ops for RNNCell and RNN: h' = act(x w_ih^T + b_ih + h w_hh^T + b_hh).
    A layer op maps (x, weights, *initial states) to (out, final states, ctx),
    its backward (ctx, w_ih, w_hh, dout, *final-state grads) to (dx, initial-
    state grads, dw_ih, dw_hh, db_ih, db_hh, {other parameter: grad}) with
    db_hh None meaning db_ih."""

    def _layer_forward(self, x, w_ih, w_hh, b_ih, b_hh, h0):
        out, h, ctx = ops.rnn_forward(self.backend, x, w_ih, w_hh, b_ih, b_hh, h0, self.nonlinearity)
        return out, (h,), ctx

    def _layer_backward(self, ctx, w_ih, w_hh, dout, dh_n, state_grad=True):
        dx, dh0, dw_ih, dw_hh, db = ops.rnn_backward(self.backend, ctx, w_ih, w_hh, dout, dh_n, state_grad)
        return dx, (dh0,), dw_ih, dw_hh, db, None, {}


class _GRUSteps:
    """The GRU layer ops for GRUCell and GRU (gates r, z, n)."""

    gates = 3

    def _layer_forward(self, x, w_ih, w_hh, b_ih, b_hh, h0):
        out, h, ctx = ops.gru_forward(self.backend, x, w_ih, w_hh, b_ih, b_hh, h0)
        return out, (h,), ctx

    def _layer_backward(self, ctx, w_ih, w_hh, dout, dh_n, state_grad=True):
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = ops.gru_backward(self.backend, ctx, w_ih, w_hh, dout, dh_n,
                                                               state_grad)
        return dx, (dh0,), dw_ih, dw_hh, db_ih, db_hh, {}


class _HiddenCell(_Cell):
    """A cell whose state is h alone (RNNCell, GRUCell).
    forward(input (N, I) or (I,), hx=None (N, H)) -> h' (N, H);
    backward(d_h') -> d_input, or (d_input, d_hx) when hx was given."""

    def forward(self, input, hx=None):
        x3, shape = self._input(input)
        h0 = self._state(hx, "hx", shape)
        out, _, ctx = self._layer_forward(x3, *self._weights(), h0)
        self.save(ctx, hx is not None, shape)
        return out[0].reshape(shape)

    def backward(self, grad_output):
        ctx, has_state, shape = self.saved()
        dh = _check_grad(self, grad_output, "grad_output", shape)
        dout = None if dh is None else dh.reshape(1, -1, self.hidden_size)
        dx, (dh0,), dw_ih, dw_hh, db_ih, db_hh, _ = self._layer_backward(ctx, self.weight_ih.data,
                                                                         self.weight_hh.data, dout, None,
                                                                         state_grad=has_state)
        self._accumulate(dw_ih, dw_hh, db_ih, db_hh)
        dx = dx.reshape(shape[:-1] + (self.input_size,))
        return (dx, dh0.reshape(shape)) if has_state else dx


class RNNCell(_ElmanSteps, _HiddenCell):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        _check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class GRUCell(_GRUSteps, _HiddenCell):
    """r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z likewise, n = tanh(W_in x +
    b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h, as torch.nn.GRUCell
    (weights (3H, I) and (3H, H) in the order r, z, n)."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, device, dtype)


class LSTMCell(_Cell):
    """One LSTM step (gates i, f, g, o): c' = f*c + i*g, h' = o*tanh(c').
    forward(input (N, I) or (I,), hx=None or (h, c) each (N, H)) -> (h', c');
    backward(d_h', d_c'=None) -> d_input, or (d_input, (d_h, d_c)) when hx was given."""

    gates = 4

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        x3, shape = self._input(input)
        h, c = (None, None) if hx is None else _lstm_state_pair(hx, "hx")
        h0, c0 = self._state(h, "hx[0]", shape), self._state(c, "hx[1]", shape)
        _, h1, c1, ctx = ops.lstm_forward(self.backend, x3, *self._weights(), h0, c0)
        self.save(ctx, hx is not None, shape)
        return h1.reshape(shape), c1.reshape(shape)

    def backward(self, grad_h, grad_c=None):
        ctx, has_state, shape = self.saved()
        dh = _check_grad(self, grad_h, "grad_h", shape)
        dc = _check_grad(self, grad_c, "grad_c", shape)
        flat = (lambda a: None if a is None else a.reshape(-1, self.hidden_size))
        dx, dh0, dc0, dw_ih, dw_hh, db, _ = ops.lstm_backward(self.backend, ctx, self.weight_ih.data,
                                                           self.weight_hh.data, None, flat(dh), flat(dc),
                                                           state_grad=has_state)
        self._accumulate(dw_ih, dw_hh, db)
        dx = dx.reshape(shape[:-1] + (self.input_size,))
        return (dx, (dh0.reshape(shape), dc0.reshape(shape))) if has_state else dx


# ---------------------------------------------------------------- multi-layer sequences
class _LSTMSteps:
    """The LSTM layer ops in the shared form of _ElmanSteps/_GRUSteps, with the
    state a pair (h, c) instead of h."""

    gates = 4
    state_names = ("h_0", "c_0")

    def _layer_forward(self, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=None):
        out, h, c, ctx = ops.lstm_forward(self.backend, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr)
        return out, (h, c), ctx

    def _layer_backward(self, ctx, w_ih, w_hh, dout, dh_n, dc_n, w_hr=None, state_grad=True):
        dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = ops.lstm_backward(self.backend, ctx, w_ih, w_hh, dout, dh_n, dc_n,
                                                                  w_hr, state_grad)
        return dx, (dh0, dc0), dw_ih, dw_hh, db, None, ({} if dw_hr is None else {"weight_hr": dw_hr})

    def _state_sizes(self):
        """h is proj_size wide with a projection, c always hidden_size."""
        return (self.proj_size or self.hidden_size, self.hidden_size)


class _Recurrent(Module):
    """Shared by RNN, GRU and LSTM: per-layer parameters weight_ih_l{k},
    weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} (and *_reverse for the second
    direction of a bidirectional layer), input/state layout conversions and
    checks, dropout on each layer's output but the last while training, as
    PyTorch. A bidirectional layer runs the same layer op on the time-reversed
    sequence and concatenates the two outputs (forward first); states are
    (num_layers * num_directions, N, H). LSTM proj_size > 0: h_t is projected
    by weight_hr_l{k} (proj_size, H) and is proj_size wide (outputs, h states
    and the recurrent weights' second dim), as PyTorch."""

    gates = 1
    state_names = ("h_0",)

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                 device, dtype):
        super().__init__()
        self.input_size = checks.positive_int(input_size, "input_size")
        self.hidden_size = checks.positive_int(hidden_size, "hidden_size")
        self.num_layers = checks.positive_int(num_layers, "num_layers")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) or \
                not 0 <= proj_size < self.hidden_size:
            raise ValueError(f"proj_size: expected an int in [0, hidden_size={self.hidden_size}), got {proj_size!r}")
        self.bidirectional, self.proj_size = bool(bidirectional), int(proj_size)
        self.num_directions = 2 if self.bidirectional else 1
        H, gh = self.hidden_size, self.gates * self.hidden_size
        R = self.proj_size or H  # the width of h: what the next step and the next layer see
        per_layer = gh * (R + 2 * self.bias) + (R * H if self.proj_size else 0)  # w_hh, the biases, w_hr
        _check_parameter_memory(self.num_layers * self.num_directions, gh * self.input_size + per_layer,
                                gh * R * self.num_directions + per_layer, np.dtype(self.dtype).itemsize)
        for k in range(self.num_layers):
            fan = self.input_size if k == 0 else R * self.num_directions
            for sfx in self._suffixes():
                setattr(self, f"weight_ih_l{k}{sfx}", _param((gh, fan), H, self.dtype))
                setattr(self, f"weight_hh_l{k}{sfx}", _param((gh, R), H, self.dtype))
                if self.bias:
                    setattr(self, f"bias_ih_l{k}{sfx}", _param((gh,), H, self.dtype))
                    setattr(self, f"bias_hh_l{k}{sfx}", _param((gh,), H, self.dtype))
                if self.proj_size:
                    setattr(self, f"weight_hr_l{k}{sfx}", _param((R, H), H, self.dtype))
        self._place(device, dtype)

    def _state_sizes(self):
        return (self.hidden_size,)

    def _extra(self, k, sfx):
        """The layer op's weights beyond w_ih, w_hh and the biases: LSTM's w_hr."""
        return {"w_hr": getattr(self, f"weight_hr_l{k}{sfx}").data} if self.proj_size else {}

    def _suffixes(self):
        return ("", "_reverse")[:self.num_directions]

    def _layer(self, k, sfx=""):
        """(w_ih, w_hh, b_ih, b_hh) arrays of layer k, direction sfx (biases None without bias)."""
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        arrays = [getattr(self, f"{n}_l{k}{sfx}").data for n in names]
        return tuple(arrays) if self.bias else (arrays[0], arrays[1], None, None)

    def _accumulate(self, k, sfx, dw_ih, dw_hh, db_ih, db_hh, extra):
        """db_hh None: the same gradient as b_ih (the LSTM's and RNN's biases are
        added together; the GRU's are not); extra: {parameter name: grad}."""
        getattr(self, f"weight_ih_l{k}{sfx}").accumulate(dw_ih)
        getattr(self, f"weight_hh_l{k}{sfx}").accumulate(dw_hh)
        if db_ih is not None:
            getattr(self, f"bias_ih_l{k}{sfx}").accumulate(db_ih)
            getattr(self, f"bias_hh_l{k}{sfx}").accumulate(db_ih.copy() if db_hh is None else db_hh)
        for name, g in extra.items():
            getattr(self, f"{name}_l{k}{sfx}").accumulate(g)

    # ------------------------------------------------------------ forward/backward
    def forward(self, input, hx=None):
        x, layout = self._sequence(input)
        given = (None,) * len(self.state_names) if hx is None else \
            (hx,) if len(self.state_names) == 1 else _lstm_state_pair(hx, "hx")
        states = [self._initial(s, name, layout, size)
                  for s, name, size in zip(given, self.state_names, self._state_sizes())]
        xp = self.backend.xp
        ctxs, finals, drops = [], [], []
        for k in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(self._suffixes()):
                at = k * self.num_directions + d
                xin = x if d == 0 else xp.ascontiguousarray(x[::-1])
                out, final, ctx = self._layer_forward(xin, *self._layer(k, sfx), *(s[at] for s in states),
                                                      **self._extra(k, sfx))
                outs.append(out if d == 0 else out[::-1])
                ctxs.append(ctx)
                finals.append(final)
            x = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=2)
            x = self._drop(x, k, drops)
        self.save(ctxs, drops, hx is not None, layout)
        return self._to_user(x, layout), self._pack([self._state_out(f, layout) for f in zip(*finals)])

    def _backward(self, grad_output, grad_states, names):
        ctxs, drops, has_state, layout = self.saved()
        xp, D = self.backend.xp, self.num_directions
        H = self._state_sizes()[0]  # each direction's share of the output
        dout = self._from_user(grad_output, "grad_output", layout)
        ds_n = [self._state_grad(g, name, layout, size)
                for g, name, size in zip(grad_states, names, self._state_sizes())]
        ds0 = [None] * (self.num_layers * D)
        for k in range(self.num_layers - 1, -1, -1):
            dx = None
            for d, sfx in enumerate(self._suffixes()):
                at = k * D + d
                g = dout if D == 1 or dout is None else dout[:, :, d * H:(d + 1) * H]
                if g is not None and d == 1:
                    g = g[::-1]
                g = None if g is None else xp.ascontiguousarray(g)
                w_ih, w_hh, _, _ = self._layer(k, sfx)
                # without a given initial state its gradient is never read: not computed
                dxd, ds0[at], *grads = self._layer_backward(ctxs[at], w_ih, w_hh, g, *(s[at] for s in ds_n),
                                                            **self._extra(k, sfx), state_grad=has_state)
                self._accumulate(k, sfx, *grads)
                dxd = dxd if d == 0 else dxd[::-1]
                dx = dxd if dx is None else dx + dxd
            dout = self._undrop(xp.ascontiguousarray(dx), k, drops)
        dx = self._to_user(dout, layout)
        if not has_state:
            return dx
        return dx, self._pack([self._state_out(s, layout) for s in zip(*ds0)])

    def _pack(self, states):
        """The states as the user sees them: h, or the pair (h, c)."""
        return states[0] if len(states) == 1 else tuple(states)

    # ------------------------------------------------------------ dropout between layers
    def _drop(self, y, k, drops):
        """Layer k's output as the next layer's input: dropout while training,
        except after the last layer (the mask's ctx goes to `drops`)."""
        ctx = None
        if self.training and self.dropout > 0.0 and k < self.num_layers - 1:
            seed, offset = next_philox_offset(y.size)
            y, ctx = dropout_ops.dropout_forward(self.backend, y, self.dropout, seed, offset)
        drops.append(ctx)
        return y

    def _undrop(self, dx, k, drops):
        """Gradient of layer k's input back through the dropout before it."""
        return dx if k == 0 or drops[k - 1] is None else dropout_ops.dropout_backward(self.backend, drops[k - 1], dx)

    # ------------------------------------------------------------ layouts
    def _sequence(self, x):
        """(x as a contiguous time-major (T, N, I), layout) with layout = (batched, T, N)."""
        checks.array(self.backend, x, "input", ndim=(2, 3), dtype=self.dtype)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                             f"got shape {tuple(x.shape)}")
        batched = x.ndim == 3
        if not batched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, N = x.shape[0], x.shape[1]
        if T == 0:  # PyTorch refuses it too; an empty batch (N = 0) is fine
            raise ValueError(f"input: expected at least one timestep, got shape {tuple(x.shape)}")
        return self.backend.xp.ascontiguousarray(x), (batched, T, N)

    def _state_shape(self, layout, size):
        batched, _, N = layout
        L = self.num_layers * self.num_directions
        return (L, N, size) if batched else (L, size)

    def _initial(self, s, name, layout, size):
        """A state given by the user as (num_layers * num_directions, N, size), or zeros."""
        batched, _, N = layout
        if s is None:
            return self.backend.xp.zeros((self.num_layers * self.num_directions, N, size), dtype=self.dtype)
        s = _check_state(self, s, name, self._state_shape(layout, size))
        return s if batched else s[:, None, :]

    def _to_user(self, y, layout):
        """A time-major (T, N, F) array in the caller's layout."""
        batched = layout[0]
        if not batched:
            return y[:, 0]
        return self.backend.xp.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    def _from_user(self, g, name, layout):
        """An output gradient (None allowed) as a contiguous time-major (T, N, D*H)."""
        batched, T, N = layout
        F = self.num_directions * self._state_sizes()[0]
        expected = (T, F) if not batched else (N, T, F) if self.batch_first else (T, N, F)
        g = _check_grad(self, g, name, expected)
        if g is None:
            return None
        g = g[:, None, :] if not batched else g.transpose(1, 0, 2) if self.batch_first else g
        return self.backend.xp.ascontiguousarray(g)

    def _state_grad(self, g, name, layout, size):
        g = _check_grad(self, g, name, self._state_shape(layout, size))
        if g is None:
            return [None] * (self.num_layers * self.num_directions)
        return list(g if layout[0] else g[:, None, :])

    def _state_out(self, states, layout):
        s = self.backend.xp.stack(states)
        return s if layout[0] else s[:, 0]

    def flatten_parameters(self):
        """torch packs the weights into one cuDNN buffer; gpunet's are separate arrays already: nothing to do."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s


class _HiddenRecurrent(_Recurrent):
    """Layers whose state is h alone (RNN, GRU).
    forward(input, h_0=None (L, N, H)) -> (output (T, N, D*H), h_n), L = num_layers * D;
    backward(d_output, d_h_n=None) -> d_input, or (d_input, d_h_0) when h_0 was given."""

    def backward(self, grad_output=None, grad_h_n=None):
        return self._backward(grad_output, (grad_h_n,), ("grad_h_n",))


class RNN(_ElmanSteps, _HiddenRecurrent):
    """Multi-layer Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        _check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        return super().extra_repr() + (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh" else "")


class GRU(_GRUSteps, _HiddenRecurrent):
    """Multi-layer GRU as torch.nn.GRU (gates r, z, n; see GRUCell), with
    PyTorch's parameters weight_ih_l{k} (3H, I), weight_hh_l{k} (3H, H) and biases."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)


class LSTM(_LSTMSteps, _Recurrent):
    """Multi-layer LSTM (gates i, f, g, o): c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t).
    forward(input, hx=None or (h_0, c_0) each (L, N, H)) -> (output, (h_n, c_n));
    backward(d_output, (d_h_n, d_c_n)=None) -> d_input, or (d_input, (d_h_0, d_c_0))
    when hx was given."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                         device, dtype)

    def backward(self, grad_output=None, grad_state=None):
        g = (None, None) if grad_state is None else _lstm_state_pair(grad_state, "grad_state")
        return self._backward(grad_output, g, ("grad_state[0]", "grad_state[1]"))
