"""Optimizers on half parameters (bfloat16, float16): float32 master weights
and float32 state, the float32 update, the master rounded once back into the
parameter (gpunet/optim/optimizer.py). On sim the float32 update is the
fused kernels' (sgd_multi, adam_multi); the rest are array code there, as
for float32 groups (recorded fallbacks)."""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, nn, optim, testing
from gpunet.nn import Parameter
from gpunet.ops.half import kernel_view

KERNELS = ("sgd_multi", "adam_multi", "bias_add", "bias_grad", "im2col", "col2im", "lstm_cell_forward",
           "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward", "rnn_cell_forward", "rnn_cell_backward",
           "attention_forward", "attention_backward")
HALF = {"bfloat16": dtypes.bfloat16, "float16": dtypes.float16}
FUSED = [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True)),
         ("Adam", dict(lr=0.01, weight_decay=0.1)),
         ("AdamW", dict(lr=0.01, betas=(0.8, 0.99)))]
ARRAY_ONLY = [("RMSprop", dict(lr=0.01, momentum=0.5), "rmsprop"),
              ("Rprop", dict(), "rprop"), ("Adagrad", dict(lr=0.1), "adagrad"),
              ("Adamax", dict(), "adamax"), ("NAdam", dict(), "nadam"), ("RAdam", dict(), "radam")]
SHAPES = [(5, 7), (13,)]
STEPS = 3


def _params(device, dtype, init):
    return [Parameter(gpunet.asarray(w.astype(dtype), device=device)) for w in init]


def _run(name, kw, device, dtype, init, grads):
    """STEPS updates of parameters `init` (cast to dtype) with the gradients
    `grads[step][i]` (cast to dtype); the parameters after each step, and the optimizer."""
    be = gpunet.get_backend(device)
    params = _params(device, dtype, init)
    opt = getattr(optim, name)(params, device=device, **kw)
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = be.asarray(g.astype(dtype))
        opt.step()
        history.append([gpunet.to_numpy(p.data).copy() for p in params])
    return history, opt, params


def _case(rng, half):
    """Initial weights and gradients exactly representable in `half`, so the
    float32 run sees the same inputs as the half run."""
    init = [rng.standard_normal(s).astype(half).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(half).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return init, grads


def _check_against_float32(name, kw, device, half_name, rng):
    """Every step's half parameters are the float32 run's parameters rounded
    once: the same float32 update on the same backend, bit for bit."""
    half = HALF[half_name]
    init, grads = _case(rng, half)
    got, opt, params = _run(name, kw, device, half, init, grads)
    ref, *_ = _run(name, kw, device, np.float32, init, grads)
    for step, (g_step, r_step) in enumerate(zip(got, ref)):
        for i, (g, r) in enumerate(zip(g_step, r_step)):
            assert g.dtype == half, (step, i)
            np.testing.assert_array_equal(g.view(np.uint16), r.astype(half).view(np.uint16),
                                          err_msg=f"step {step}, parameter {i}")
    for p, r in zip(params, ref[-1]):  # master weights and state are float32
        for key, v in opt.state[p].items():
            if hasattr(v, "dtype"):
                assert v.dtype == np.float32, key
        np.testing.assert_array_equal(gpunet.to_numpy(opt.master_weights[p]), r)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,kw", FUSED, ids=[c[0] for c in FUSED])
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_fused_optimizers_update_float32_masters(name, kw, device, half_name, rng, schedule,
                                                                  monkeypatch):
    """On sim the fused kernels take the half weights and gradients themselves
    (one launch per step: the `weights` argument)."""
    from gpunet.ops import optim as optim_ops
    handed = []
    weights = optim_ops._weights
    monkeypatch.setattr(optim_ops, "_weights", lambda be, w: handed.append(w) or weights(be, w))
    _check_against_float32(name, kw, device, half_name, rng)
    if device == "sim":
        assert len(handed) == 2 * STEPS and all(w is None for w in handed[STEPS:])  # the float32 run's: None
        assert all(len(w) == len(SHAPES) and w[0].dtype == HALF[half_name] for w in handed[:STEPS])


@pytest.mark.fallback(*sorted({c[2] for c in ARRAY_ONLY}))
@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,kw,op", ARRAY_ONLY, ids=[c[0] for c in ARRAY_ONLY])
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_array_optimizers_update_float32_masters(name, kw, op, device, half_name, rng):
    _check_against_float32(name, kw, device, half_name, rng)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_small_steps_accumulate_in_the_master(device, half_name):
    """lr * grad = 1e-3 is below half an ulp of 1.0 in either type (2**-8 in
    bfloat16, 2**-11 in float16): updating the half weights themselves would
    never move them; the master accumulates the steps."""
    half = HALF[half_name]
    be = gpunet.get_backend(device)
    p = Parameter(gpunet.asarray(np.ones(8, half), device=device))
    opt = optim.SGD([p], lr=1e-3, device=device)
    for _ in range(10):
        p.grad = be.asarray(np.ones(8, half))
        opt.step()
    master = np.float32(1.0)
    for _ in range(10):
        master = np.float32(master - np.float32(1e-3))
    np.testing.assert_array_equal(gpunet.to_numpy(p.data), np.full(8, master).astype(half))
    assert gpunet.to_numpy(p.data)[0] < 1.0


@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_master_follows_a_weight_written_elsewhere(half_name):
    """A parameter overwritten outside the optimizer (a loaded checkpoint, an
    init) no longer holds its master's rounding: the master is taken anew."""
    half = HALF[half_name]
    p = Parameter(np.ones(4, half))
    opt = optim.SGD([p], lr=0.5)
    p.grad = np.ones(4, half)
    opt.step()
    np.testing.assert_array_equal(p.data.astype(np.float32), 0.5)
    p.data[...] = np.full(4, 3.0, half)
    opt.step()
    np.testing.assert_array_equal(p.data.astype(np.float32), 2.5)
    np.testing.assert_array_equal(opt.master_weights[p], 2.5)


@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_optimizer_state_dict_keeps_float32_masters(half_name, rng):
    """state_dict holds the float32 masters and moments; loading it into a
    fresh optimizer over the same half weights continues the run exactly."""
    half = HALF[half_name]
    init, grads = _case(rng, half)
    whole, *_ = _run("Adam", dict(lr=0.01), "cpu", half, init, grads)
    first, opt, params = _run("Adam", dict(lr=0.01), "cpu", half, init, grads[:1])
    saved = opt.state_dict()
    for entry in saved["state"].values():
        assert {k: v.dtype for k, v in entry.items() if hasattr(v, "dtype")} == \
            dict.fromkeys(("exp_avg", "exp_avg_sq", "master_weight"), np.float32)
    fresh = optim.Adam(params, lr=0.01)
    fresh.load_state_dict(saved)
    assert all(fresh.master_weights[p].dtype == np.float32 for p in params)
    for step_grads in grads[1:]:
        for p, g in zip(params, step_grads):
            p.grad = g.astype(half)
        fresh.step()
    for p, w in zip(params, whole[-1]):
        np.testing.assert_array_equal(p.data.view(np.uint16), w.view(np.uint16))


# ---------------------------------------------------------------- convolutions (cpu reference)
CONVS = [("Conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1), (2, 3, 9)),
         ("Conv2d", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1), (2, 3, 7, 6)),
         ("Conv2d_groups", lambda: nn.Conv2d(4, 6, (2, 3), dilation=(2, 1), groups=2), (2, 4, 7, 6)),
         ("ConvTranspose2d", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5))]


def _module_run(make, dtype, params, x, dy):
    m = make()
    for (_, p), w in zip(m.named_parameters(), params):
        p.data[...] = w
    m = m.to("cpu", dtype)
    y = m(x.astype(dtype))
    dx = m.backward(dy.astype(dtype))
    return [y, dx] + [p.grad for _, p in m.named_parameters()]


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,make,shape", CONVS, ids=[c[0] for c in CONVS])
def test_bfloat16_float16_convolutions_round_the_float32_result_once(name, make, shape, half_name, rng):
    """Half inputs read in float32, the float32 convolution (its GEMM and
    im2col/col2im), each output and gradient rounded once: bit for bit the
    float32 module's results on the same (half-representable) values, rounded."""
    half = HALF[half_name]
    params = [gpunet.to_numpy(p.data).astype(half).astype(np.float32) for _, p in make().named_parameters()]
    x = rng.standard_normal(shape).astype(half).astype(np.float32)
    y_shape = make()(x).shape
    dy = rng.standard_normal(y_shape).astype(half).astype(np.float32)
    got = _module_run(make, half, params, x, dy)
    ref = _module_run(make, np.float32, params, x, dy)
    assert len(got) == 4  # y, dx, dw, db
    for what, g, r in zip(("y", "dx", "dw", "db"), got, ref):
        assert g.dtype == half, what
        np.testing.assert_array_equal(g.view(np.uint16), r.astype(half).view(np.uint16), err_msg=what)
        testing.assert_close(g, r, n=int(np.prod(shape[1:])), name=what)


# ---------------------------------------------------------------- Linear and convolutions on sim's half kernels
LAYERS = [("Linear", lambda: nn.Linear(40, 12), (5, 40)),
          ("Linear_3d", lambda: nn.Linear(24, 16), (2, 3, 24))] + CONVS + [
          ("Conv2d_strided_dilated", lambda: nn.Conv2d(4, 8, 3, stride=(2, 1), padding=2, dilation=2), (3, 4, 9, 8)),
          ("ConvTranspose2d_groups", lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0),
                                                                dilation=(1, 2), groups=2, bias=False), (2, 4, 5, 4))]
LAYER_KERNELS = {"Linear": ("bias_add", "bias_grad"), "Conv": ("im2col", "col2im")}


def _layer_run(make, device, dtype, params, x, dy):
    """y, dx and the parameter gradients of the module on `device` in `dtype`."""
    m = make()
    for (_, p), w in zip(m.named_parameters(), params):
        p.data[...] = w
    m = m.to(device, dtype)
    be = m.backend
    y = m(be.asarray(x.astype(dtype)))
    dx = m.backward(be.asarray(dy.astype(dtype)))
    return [gpunet.to_numpy(a) for a in [y, dx] + [p.grad for _, p in m.named_parameters()]]


def _layer_case(make, shape, half, rng):
    """Parameters, input and output gradient, all exactly representable in `half`."""
    params = [gpunet.to_numpy(p.data).astype(half).astype(np.float32) for _, p in make().named_parameters()]
    x = rng.standard_normal(shape).astype(half).astype(np.float32)
    dy = rng.standard_normal(make()(x).shape).astype(half).astype(np.float32)
    return params, x, dy


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_bfloat16_float16_linear_and_convolutions_on_sim_kernels(name, make, shape, half_name, rng, schedule,
                                                                 monkeypatch):
    """Forward and backward on sim's half kernels (im2col/col2im, bias add and
    gradient on the half arrays; GEMMs accumulated in float32, rounded once)
    against the cpu half reference and the float64 module on the same values,
    within the half tolerance of the reduction length. The convolutions run
    in chunks of two images (a small workspace): the weight gradient sums the
    chunks in float32. (Half convolutions go to the tensor-core kernels,
    tests/test_conv_tensor_core.py; the im2col path here takes the calls those
    do not, so they are told to decline.)"""
    from gpunet.ops import conv, conv_tensor_core
    half = HALF[half_name]
    params, x, dy = _layer_case(make, shape, half, rng)
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 2 * int(np.prod(shape[1:])) * 9 * 2)
    monkeypatch.setattr(conv_tensor_core, "takes", lambda *args: False)
    kernels = LAYER_KERNELS["Linear" if name.startswith("Linear") else "Conv"]
    with testing.expect_kernels("sim", kernels):
        got = _layer_run(make, "sim", half, params, x, dy)
    cpu = _layer_run(make, "cpu", half, params, x, dy)
    f64 = _layer_run(make, "cpu", np.float64, params, x, dy)
    n = int(np.prod(shape[1:])) * max(1, shape[0])
    assert len(got) == len(cpu) == len(f64)
    for what, g, c, r in zip(("y", "dx", "dw", "db"), got, cpu, f64):
        assert g.dtype == half, what
        testing.assert_close(g, c, n=n, name=what + " vs cpu")
        testing.assert_close(g, r, n=n, name=what + " vs float64")


@pytest.mark.no_kernels("without a bias, sim's Linear is its GEMMs alone: array code")
@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_linear_without_bias_matches_cpu_bit_for_bit(half_name, rng):
    """Both compute the same float32 GEMM on the same values and round once."""
    half = HALF[half_name]
    make = lambda: nn.Linear(33, 7, bias=False)  # noqa: E731
    params, x, dy = _layer_case(make, (6, 33), half, rng)
    got = _layer_run(make, "sim", half, params, x, dy)
    cpu = _layer_run(make, "cpu", half, params, x, dy)
    for g, c in zip(got, cpu):
        np.testing.assert_array_equal(g.view(np.uint16), c.view(np.uint16))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_float16_linear_accumulates_past_the_half_range(schedule):
    """Partial sums beyond float16's 65504 that cancel: float32 accumulation
    gives the exact 1.0 (a float16 accumulator would reach inf); a true
    result past the range rounds to inf on cpu and sim alike; the bias
    gradient sums 40000 + 40000 - 40000 in float32 too."""
    x = np.array([[60000.0, 60000.0, 1.0], [60000.0, 60000.0, 60000.0]], np.float16)
    for device in ("cpu", "sim"):
        m = nn.Linear(3, 2).to(device, "float16")
        m.weight.data[...] = m.backend.asarray(np.array([[1, -1, 1], [1, 1, 0]], np.float16))
        m.bias.data[...] = 0
        y = gpunet.to_numpy(m(m.backend.asarray(x)))
        np.testing.assert_array_equal(y.astype(np.float32), [[1.0, np.inf], [60000.0, np.inf]])
        m.backward(m.backend.asarray(np.array([[40000, 1], [40000, 1]], np.float16)))
        dy3 = np.array([[40000, 1], [40000, 1], [-40000, 1]], np.float16)
        m(m.backend.asarray(np.vstack([x, x[:1]])))
        m.weight.grad = m.bias.grad = None
        m.backward(m.backend.asarray(dy3))
        np.testing.assert_array_equal(gpunet.to_numpy(m.bias.grad).astype(np.float32), [40000.0, 3.0])


def bits(a):
    """A half array as the sim's bindings take it (bfloat16 as its int16 bits)."""
    return kernel_view(gpunet.get_backend("sim"), a)

@pytest.mark.no_kernels("the arguments are refused before any launch")
@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_gemm_bindings_refuse_mixed_storage(half_name):
    k = gpunet.get_backend("sim").kernels
    half = HALF[half_name]
    y = bits(np.zeros((4, 3), half))
    with pytest.raises(TypeError, match="argument 'b': expected the dtype of 'y'"):
        k.bias_add(y, np.zeros(3, np.float32), 1, 0)
    with pytest.raises(TypeError, match="argument 'db': expected the dtype of 'dy'"):
        k.bias_grad(y, np.zeros(3, np.float32), 1, 0)
    x, cols = bits(np.zeros((1, 2, 3, 3), half)), np.zeros((2 * 4, 4), np.float32)
    with pytest.raises(TypeError, match="argument 'cols': expected the dtype of 'x'"):
        k.im2col(x, cols, 2, 2, 1, 1, 0, 0, 1, 1, 0)
    with pytest.raises(TypeError, match="argument 'dcols': expected dtype float32, float16 or bfloat16"):
        k.col2im(np.zeros((8, 4), np.float64), np.zeros((1, 2, 3, 3)), 2, 2, 1, 1, 0, 0, 1, 1, 0)
    state, gates = bits(np.zeros((2, 3), half)), bits(np.zeros((2, 12), half))
    with pytest.raises(TypeError, match="argument 'hg': expected the dtype of 'c_prev'"):
        k.lstm_cell_forward(gates, np.zeros((2, 12), np.float32), None, state, gates, state, state, 0)
    with pytest.raises(TypeError, match="argument 'dh_next': expected the dtype of 'h'"):
        k.rnn_cell_backward(state, None, np.zeros((2, 3), np.float32), state, False, 0)
    q, lse = bits(np.zeros((1, 4, 8), half)), np.zeros((1, 4), np.float32)
    with pytest.raises(TypeError, match="argument 'v': expected the dtype of 'q'"):
        k.attention_forward(q, q, np.zeros((1, 4, 8), np.float32), None, 0, 0, 0, 1, False, 1.0, q.copy(), lse, 0)
    with pytest.raises(TypeError, match="argument 'lse': expected dtype float32"):
        k.attention_forward(q, q, q, None, 0, 0, 0, 1, False, 1.0, q.copy(), bits(np.zeros((1, 4), half)), 0)


# ---------------------------------------------------------------- the fused optimizer kernels on half weights
@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_fused_kernels_write_the_rounded_master(half_name, rng, schedule):
    """sgd_multi with weights=: the half gradients read in float32, the float32
    master updated as a float32 group's parameter, each weight the updated
    master rounded once; whole quads and a tail (13 elements), and a
    misaligned view (the element loop)."""
    k = gpunet.get_backend("sim").kernels
    half = HALF[half_name]
    masters = [rng.standard_normal(13).astype(np.float32), rng.standard_normal(9).astype(np.float32)]
    grads = [rng.standard_normal(13).astype(half), rng.standard_normal(10).astype(half)[1:]]
    weights = [m.astype(half) for m in masters]
    ref = [m.copy() for m in masters]
    table = np.empty(2 * k.OPTIM_TABLE_ENTRY_BYTES, np.uint8)
    k.sgd_multi(ref, [g.astype(np.float32) for g in grads], [], [], table, 0.5, 0.0, 0.0, 0.1, False, 0)
    k.sgd_multi(masters, [bits(g) for g in grads], [], [], table, 0.5, 0.0, 0.0, 0.1, False, 0,
                weights=[bits(w) for w in weights])
    for m, w, r in zip(masters, weights, ref):
        np.testing.assert_array_equal(m, r)
        np.testing.assert_array_equal(w.view(np.uint16), r.astype(half).view(np.uint16))


@pytest.mark.no_kernels("the arguments are refused before any launch")
@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_fused_kernels_refuse_mixed_storage(half_name):
    k = gpunet.get_backend("sim").kernels
    half = HALF[half_name]
    other = np.float16 if half_name == "bfloat16" else np.int16  # the other half type (bfloat16 as int16)
    p, table = np.zeros(4, np.float32), np.empty(k.OPTIM_TABLE_ENTRY_BYTES, np.uint8)
    w = bits(np.zeros(4, half))
    args = ([], [], table, 0.1, 0.0, 0.0, 0.0, False, 0)
    with pytest.raises(TypeError, match=r"argument 'grads\[0\]': expected the dtype of weights\[0\]"):
        k.sgd_multi([p], [np.zeros(4, other)], *args, weights=[w])
    with pytest.raises(TypeError, match=r"argument 'grads\[0\]': expected the dtype of weights\[0\]"):
        k.sgd_multi([p], [np.zeros(4, np.float32)], *args, weights=[w])
    with pytest.raises(TypeError, match=r"argument 'weights\[0\]': expected dtype float16 or bfloat16"):
        k.sgd_multi([p], [np.zeros(4, np.float32)], *args, weights=[np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match=r"argument 'params\[0\]': expected dtype float32"):
        k.sgd_multi([bits(np.zeros(4, half))], [w], *args, weights=[w])
    with pytest.raises(ValueError, match=r"argument 'weights\[0\]': expected the shape of params\[0\]"):
        k.sgd_multi([p], [w], *args, weights=[bits(np.zeros(5, half))])


# ---------------------------------------------------------------- recurrent layers and attention (cpu reference)
def _bits(a):
    return np.asarray(gpunet.to_numpy(a)).view(np.uint16)


def _outputs(out):
    """A module's forward result as a flat list of arrays."""
    if isinstance(out, tuple):
        return [a for o in out for a in _outputs(o)]
    return [] if out is None else [out]


RECURRENT = [("LSTM", lambda: nn.LSTM(5, 4)), ("GRU", lambda: nn.GRU(5, 4)),
             ("RNN", lambda: nn.RNN(5, 4, nonlinearity="relu")),
             ("LSTM_2layer_bidirectional_proj", lambda: nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)),
             ("GRU_2layer", lambda: nn.GRU(5, 4, num_layers=2))]


def _recurrent_run(make, dtype, state, x, half, device="cpu"):
    """Outputs (out, final states) and every gradient of the module in
    `dtype` on `device`, the output gradient representable in `half`."""
    m = make()
    m.load_state_dict(state)
    m = m.to(device, dtype)
    be = m.backend
    outs = _outputs(m(be.asarray(x.astype(dtype))))
    dy = np.random.default_rng(7).standard_normal(outs[0].shape).astype(half)
    dx = m.backward(be.asarray(dy.astype(dtype)))
    return [gpunet.to_numpy(a) for a in outs + _outputs(dx) + [p.grad for _, p in m.named_parameters()]]


def _recurrent_case(make, half, rng):
    gpunet.manual_seed(3)
    state = {k: gpunet.to_numpy(v).astype(half).astype(np.float32) for k, v in make().state_dict().items()}
    return state, rng.standard_normal((6, 2, 5)).astype(half).astype(np.float32)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,make", RECURRENT, ids=[c[0] for c in RECURRENT])
def test_bfloat16_float16_recurrent_layers_on_cpu(name, make, half_name, rng):
    """The whole recurrence in float32, each output, final state and gradient
    rounded once: a single layer's outputs are the float32 module's rounded
    (bit for bit); every result within the half tolerance of the float64
    module on the same values (T = 6 steps: reduction length 6 * width)."""
    half = HALF[half_name]
    state, x = _recurrent_case(make, half, rng)
    got = _recurrent_run(make, half, state, x, half)
    ref32 = _recurrent_run(make, np.float32, state, x, half)
    ref64 = _recurrent_run(make, np.float64, state, x, half)
    if "layer" not in name:  # out, h_n (and c_n)
        for o, r in zip(got[:3 if name == "LSTM" else 2], ref32):
            np.testing.assert_array_equal(_bits(o), _bits(r.astype(half)))
    assert len(got) == len(ref64)
    for g, r in zip(got, ref64):
        assert g.dtype == half
        testing.assert_close(g, r, n=6 * 12)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,make", RECURRENT, ids=[c[0] for c in RECURRENT])
def test_bfloat16_float16_recurrent_layers_on_sim_kernels(name, make, half_name, rng, schedule):
    """The cell kernels on half storage: h, c and the gates rounded at every
    step (T = 6), so sim is within the half tolerance of cpu and float64
    plus, absolutely, two half roundings of the largest value per step."""
    half = HALF[half_name]
    state, x = _recurrent_case(make, half, rng)
    cell = name.split("_")[0].lower()
    with testing.expect_kernels("sim", (f"{cell}_cell_forward", f"{cell}_cell_backward", "bias_add", "bias_grad")):
        got = _recurrent_run(make, half, state, x, half, device="sim")
    cpu = _recurrent_run(make, half, state, x, half)
    ref64 = _recurrent_run(make, np.float64, state, x, half)
    assert len(got) == len(cpu) == len(ref64)
    for g, c, r in zip(got, cpu, ref64):
        assert g.dtype == half
        atol = testing.tolerances(half, 6 * 12)[1] + 6 * 2 * float(dtypes.eps(half)) * max(1.0, float(np.abs(r).max()))
        testing.assert_close(g, c, n=6 * 12, atol=atol)
        testing.assert_close(g, r, n=6 * 12, atol=atol)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_bfloat16_float16_scaled_dot_product_attention_on_cpu(causal, half_name, rng):
    """float32 compute, the output rounded once (bit for bit the float32
    result rounded); the gradients within the half tolerance of float64."""
    half = HALF[half_name]
    q, k, v = (rng.standard_normal((2, 3, 7, 8)).astype(half) for _ in range(3))
    dy = rng.standard_normal((2, 3, 7, 8)).astype(half)
    res = {}
    for dt in (half, np.float32, np.float64):
        m = nn.ScaledDotProductAttention().to(dtype=dt)
        y = m(*(a.astype(dt) for a in (q, k, v)), is_causal=causal)
        res[dt] = [y] + list(m.backward(dy.astype(dt)))
    np.testing.assert_array_equal(_bits(res[half][0]), _bits(res[np.float32][0].astype(half)))
    for got, ref in zip(res[half], res[np.float64]):
        assert got.dtype == half
        testing.assert_close(got, ref, n=8 * 7)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
def test_bfloat16_float16_multihead_attention_on_cpu(self_attention, half_name, rng):
    """Projections, attention and the returned weights in the half dtype,
    within the half tolerance of the float64 module plus, absolutely, four
    half roundings of the largest value (the projections, the attention
    output, the output projection's gradient and the heads' gradients are
    each rounded before the next stage reads them: the key bias gradient,
    exactly 0, is a sum of rounded terms); with a key padding mask."""
    half = HALF[half_name]
    gpunet.manual_seed(5)
    state = {kk: gpunet.to_numpy(vv).astype(half).astype(np.float32)
             for kk, vv in nn.MultiheadAttention(8, 2).state_dict().items()}
    q = rng.standard_normal((5, 3, 8)).astype(half)
    kv = q if self_attention else rng.standard_normal((4, 3, 8)).astype(half)
    pad = np.zeros((3, kv.shape[0]), bool)
    pad[1, -1] = True
    dy = rng.standard_normal((5, 3, 8)).astype(half)
    res = {}
    for dt in (half, np.float64):
        m = nn.MultiheadAttention(8, 2)
        m.load_state_dict(state)
        m = m.to(dtype=dt)
        qq = q.astype(dt)
        kk = qq if self_attention else kv.astype(dt)
        out, w = m(qq, kk, kk, key_padding_mask=pad)
        grads = _outputs(m.backward(dy.astype(dt)))
        res[dt] = [out, w] + grads + [p.grad for _, p in m.named_parameters()]
    for got, ref in zip(res[half], res[np.float64]):
        assert got.dtype == half
        stages = 4 * float(dtypes.eps(half)) * max(1.0, float(np.abs(ref).max()))
        testing.assert_close(got, ref, n=8 * 5 * 3, atol=testing.tolerances(half, 8 * 5 * 3)[1] + stages)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("case", ["full", "causal", "mask_E40"])
def test_bfloat16_float16_attention_kernels_on_sim(case, half_name, rng, schedule):
    """The flash-attention kernels on half q, k, v (float32 scores, running
    max/sum and accumulators; each output and gradient rounded once) against
    the cpu half reference and float64: forward and backward, causal, an
    additive mask broadcast over the heads with head dim 40 (the 64 bucket,
    zero-padded)."""
    half = HALF[half_name]
    E = 40 if case == "mask_E40" else 12  # unmasked multiples of 8 take the tensor-core kernels (test_attention_tc.py)
    q, k, v = (rng.standard_normal((2, 3, 7, E)).astype(half) for _ in range(3))
    dy = rng.standard_normal((2, 3, 7, E)).astype(half)
    mask = None
    if case == "mask_E40":
        mask = np.where(rng.random((2, 1, 7, 7)) < 0.3, -np.inf, rng.standard_normal((2, 1, 7, 7))).astype(half)
        mask[..., 0] = 0  # every query keeps a key
    res = {}
    for device, dt in (("sim", half), ("cpu", half), ("cpu", np.float64)):
        m = nn.ScaledDotProductAttention().to(device, dt)
        be = m.backend
        with testing.expect_kernels(device, ("attention_forward", "attention_backward")):
            y = m(*(be.asarray(a.astype(dt)) for a in (q, k, v)), attn_mask=None if mask is None else
                  be.asarray(mask.astype(dt)), is_causal=case == "causal")
            grads = m.backward(be.asarray(dy.astype(dt)))
        res[device, dt] = [gpunet.to_numpy(a) for a in (y, *grads)]
    for got, cpu, f64 in zip(res["sim", half], res["cpu", half], res["cpu", np.float64]):
        assert got.dtype == half
        testing.assert_close(got, cpu, n=7 * E)
        testing.assert_close(got, f64, n=7 * E)


@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_multihead_attention_on_sim_kernels(half_name, rng, schedule):
    """MultiheadAttention on sim in the half dtype (projections on the linear
    kernels, attention on the flash kernels, the returned weights recomputed
    from lse) against the cpu half reference."""
    half = HALF[half_name]
    gpunet.manual_seed(5)
    state = {kk: gpunet.to_numpy(vv).astype(half) for kk, vv in nn.MultiheadAttention(8, 2).state_dict().items()}
    x = rng.standard_normal((5, 3, 8)).astype(half)
    dy = rng.standard_normal((5, 3, 8)).astype(half)
    res = {}
    for device in ("sim", "cpu"):
        m = nn.MultiheadAttention(8, 2).to(device, half)
        m.load_state_dict(state)
        be = m.backend
        with testing.expect_kernels(device, ("attention_forward", "attention_backward", "bias_add", "bias_grad")):
            xx = be.asarray(x)
            out, w = m(xx, xx, xx)
            dx = m.backward(be.asarray(dy))
        res[device] = [gpunet.to_numpy(a) for a in [out, w, *dx] + [p.grad for _, p in m.named_parameters()]]
    for got, cpu in zip(res["sim"], res["cpu"]):
        assert got.dtype == half
        stages = 4 * float(dtypes.eps(half)) * max(1.0, float(np.abs(cpu.astype(np.float64)).max()))
        testing.assert_close(got, cpu, n=8 * 5 * 3, atol=testing.tolerances(half, 8 * 5 * 3)[1] + stages)


@pytest.mark.gpu
@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,make,shape", [c for c in LAYERS if c[0] in ("Linear", "Conv2d_groups",
                                                                           "ConvTranspose2d")],
                         ids=["Linear", "Conv2d_groups", "ConvTranspose2d"])
def test_bfloat16_float16_layers_on_cuda(name, make, shape, half_name, rng):
    """Where a GPU is lent: the half kernels and cuBLAS's half GEMMs (float32
    accumulation) against the cpu half reference."""
    info = gpunet.backends()["cuda"]
    if not info["available"]:
        pytest.skip(f"backend 'cuda' unavailable: {info['reason']}")
    half = HALF[half_name]
    params, x, dy = _layer_case(make, shape, half, rng)
    got = _layer_run(make, "cuda", half, params, x, dy)
    cpu = _layer_run(make, "cpu", half, params, x, dy)
    for what, g, c in zip(("y", "dx", "dw", "db"), got, cpu):
        assert g.dtype == half, what
        testing.assert_close(g, c, n=int(np.prod(shape)), name=what)
