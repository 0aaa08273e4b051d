"""The GradScaler's inf/NaN check fused into the optimizer update on kernel
backends (gpunet/amp/grad_scaler.py, csrc/kernels/optim.cu): one
nonfinite_check launch over every gradient sets a device flag, and
sgd_multi/adam_multi take the flag and 1/scale. A skipped step leaves
parameters, master weights and optimizer state bit-unchanged (Adam's step
count included, as PyTorch's fused Adam); a clean step equals the path that
unscales the gradients in place first (scaler.unscale_) bit for bit."""
import numpy as np
import pytest

import gpunet
from gpunet import amp, dtypes, optim
from gpunet.nn import Parameter
from conftest import require

KERNELS = ("nonfinite_check", "sgd_multi", "adam_multi")
FUSED = [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True)),
         ("Adam", dict(lr=0.01, weight_decay=0.1)),
         ("AdamW", dict(lr=0.01, betas=(0.8, 0.99)))]
SHAPES = [(5, 7), (13,), (3, 4), (1,), (33,)]  # tails and whole quads
SCALE = 2.0 ** 10
KERNEL_DEVICES = ["sim", "cuda"]


def _setup(name, kw, device, dtype, rng):
    """Parameters of `dtype` and an optimizer on `device`, and per-step
    gradients already multiplied by SCALE (exactly: powers of two), whose
    unscaled values are normal numbers of `dtype` (so unscaling in place
    rounds nothing and both paths see the same float32 gradients)."""
    be = gpunet.get_backend(device)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params = [Parameter(be.asarray(w)) for w in init]

    def grads():
        out = []
        for s in SHAPES:
            g = rng.standard_normal(s)
            g = np.where(np.abs(g) < 1e-2, 1e-2, g)  # clear of float16's subnormals once unscaled
            out.append((g.astype(dtype).astype(np.float64) * SCALE).astype(dtype))
        return out
    return be, params, getattr(optim, name)(params, device=device, **kw), grads


def _snapshot(opt, params):
    """Bits of every parameter, master weight and state entry."""
    snap = {}
    for i, p in enumerate(params):
        snap[f"param{i}"] = gpunet.to_numpy(p.data).copy()
        if p in opt.master_weights:
            snap[f"master{i}"] = gpunet.to_numpy(opt.master_weights[p]).copy()
        for key, value in opt.state.get(p, {}).items():
            snap[f"{key}{i}"] = gpunet.to_numpy(value).copy() if hasattr(value, "shape") else value
    return snap


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        np.testing.assert_array_equal(x.view(f"u{x.itemsize}") if x.dtype.kind == "f" else x,
                                      y.view(f"u{y.itemsize}") if y.dtype.kind == "f" else y, err_msg=key)


def _calls(be):
    return dict(be.kernels.calls) if hasattr(be.kernels, "calls") else None


def _steps(be, opt, params, scaler, step_grads, explicit_unscale=False):
    for grads in step_grads:
        for p, g in zip(params, grads):
            p.grad = be.asarray(g.copy())  # a copy: sim may share host memory
        if explicit_unscale:
            scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()


@pytest.mark.parametrize("dtype", [np.float32, dtypes.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("name,kw", FUSED, ids=[c[0] for c in FUSED])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_fused_scaler_skips_a_step_with_inf_or_nan(name, kw, bad, dtype, device, rng, schedule):
    """Two clean steps, then one gradient element of one tensor among five
    is inf/NaN: one check launch and one update launch run, nothing the
    optimizer keeps changes (bit for bit), the gradients are not rewritten,
    the scale backs off and the skipped step is counted (at update)."""
    require(device)
    be, params, opt, grads = _setup(name, kw, device, dtype, rng)
    scaler = amp.GradScaler(init_scale=SCALE, growth_interval=100)
    _steps(be, opt, params, scaler, [grads(), grads()])
    before = _snapshot(opt, params)
    planted = grads()
    planted[2].reshape(-1)[5] = bad
    for p, g in zip(params, planted):
        p.grad = be.asarray(g.copy())  # a copy: sim may share host memory
    calls = _calls(be)
    scaler.step(opt)
    if calls is not None:
        ran = {k: v - calls.get(k, 0) for k, v in _calls(be).items() if v != calls.get(k, 0)}
        kernel = "sgd_multi" if name == "SGD" else "adam_multi"
        assert ran == {"nonfinite_check": 1, kernel: 1}, ran
    assert scaler.skipped_steps == 0  # known only at update(): step does not sync
    scaler.update()
    _assert_same(_snapshot(opt, params), before)
    for p, g in zip(params, planted):  # read, never rewritten
        np.testing.assert_array_equal(gpunet.to_numpy(p.grad).view(np.uint8), g.view(np.uint8))
    assert scaler.skipped_steps == 1 and scaler.get_scale() == SCALE / 2


@pytest.mark.parametrize("dtype", [np.float32, dtypes.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("name,kw", FUSED, ids=[c[0] for c in FUSED])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_fused_scaler_skipped_first_step_leaves_no_state(name, kw, dtype, device, rng):
    """A first step with an inf creates nothing that changes later steps:
    Adam's step count is back to 0, SGD's new momentum buffer is dropped, so
    the following clean steps equal those of an optimizer that never saw the
    bad step (bit for bit)."""
    require(device)
    be, params, opt, grads = _setup(name, kw, device, dtype, np.random.default_rng(7))
    scaler = amp.GradScaler(init_scale=SCALE)
    planted = grads()
    planted[0].reshape(-1)[0] = np.inf
    _steps(be, opt, params, scaler, [planted])
    assert scaler.skipped_steps == 1
    for p in params:
        state = opt.state.get(p, {})
        assert state.get("step", 0) == 0 and "momentum_buffer" not in state, state.keys()
    clean = [grads(), grads()]
    _steps(be, opt, params, amp.GradScaler(init_scale=SCALE), clean)
    ref_be, ref_params, ref_opt, _ = _setup(name, kw, device, dtype, np.random.default_rng(7))
    _steps(ref_be, ref_opt, ref_params, amp.GradScaler(init_scale=SCALE), clean)
    _assert_same(_snapshot(opt, params), _snapshot(ref_opt, ref_params))


@pytest.mark.parametrize("dtype", [np.float32, dtypes.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("name,kw", FUSED, ids=[c[0] for c in FUSED])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_fused_scaler_clean_steps_equal_unscale_then_step(name, kw, dtype, device, rng, schedule):
    """Three clean steps through the fused check equal, bit for bit, three
    steps after an explicit unscale_ (gradients unscaled in place by array
    code, then the update with inv_scale 1): the kernel multiplies each
    gradient by the same float32 1/scale, unfused, as the in-place unscale
    does, and (powers of two, normal results) float16 rounds nothing there.
    The fused run launches the check; the explicit one does not."""
    require(device)
    runs = {}
    for explicit in (False, True):
        be, params, opt, grads = _setup(name, kw, device, dtype, np.random.default_rng(3))
        scaler = amp.GradScaler(init_scale=SCALE)
        calls = _calls(be)
        _steps(be, opt, params, scaler, [grads() for _ in range(3)], explicit_unscale=explicit)
        if calls is not None:
            checks = _calls(be).get("nonfinite_check", 0) - calls.get("nonfinite_check", 0)
            assert checks == (0 if explicit else 3)
        assert scaler.skipped_steps == 0 and scaler.get_scale() == SCALE
        runs[explicit] = _snapshot(opt, params)
    _assert_same(runs[False], runs[True])


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_fused_scaler_unscales_in_float32_registers(device, rng):
    """float16 gradients whose unscaled values are below float16's normal
    range (where an in-place unscale would round them to subnormals): the
    fused step unscales in float32, so the float32 masters equal, bit for
    bit, a float32 run given the exactly unscaled gradients."""
    require(device)
    be = gpunet.get_backend(device)
    init = [rng.standard_normal(s).astype(np.float16) for s in SHAPES]
    grads = [(rng.standard_normal(s) * 2e-6 * SCALE).astype(np.float16) for s in SHAPES]
    assert min(float(np.abs(g).max()) for g in grads) / SCALE < 2.0 ** -14  # float16 subnormal once unscaled
    half = [Parameter(be.asarray(w.copy())) for w in init]
    ref = [Parameter(be.asarray(w.astype(np.float32))) for w in init]
    opt_half, opt_ref = optim.Adam(half, lr=0.01, device=device), optim.Adam(ref, lr=0.01, device=device)
    for p, q, g in zip(half, ref, grads):
        p.grad = be.asarray(g.copy())
        q.grad = be.asarray(g.astype(np.float32) / np.float32(SCALE))
    scaler = amp.GradScaler(init_scale=SCALE)
    scaler.step(opt_half)
    scaler.update()
    opt_ref.step()
    for p, q in zip(half, ref):
        np.testing.assert_array_equal(gpunet.to_numpy(opt_half.master_weights[p]), gpunet.to_numpy(q.data))
        np.testing.assert_array_equal(gpunet.to_numpy(opt_half.state[p]["exp_avg_sq"]),
                                      gpunet.to_numpy(opt_ref.state[q]["exp_avg_sq"]))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_fused_scaler_after_unscale_skips_on_inf(device, rng):
    """unscale_ (to clip): gradients unscaled in place as in PyTorch; the
    fused step then takes unscale_'s flag with inv_scale 1 and skips."""
    require(device)
    be, params, opt, grads = _setup("Adam", {}, device, dtypes.float16, rng)
    scaler = amp.GradScaler(init_scale=SCALE)
    planted = grads()
    planted[4][-1] = np.nan
    for p, g in zip(params, planted):
        p.grad = be.asarray(g.copy())  # a copy: sim may share host memory
    before = _snapshot(opt, params)
    scaler.unscale_(opt)
    np.testing.assert_array_equal(gpunet.to_numpy(params[0].grad), planted[0].astype(np.float32) / SCALE)
    scaler.step(opt)
    scaler.update()
    after = _snapshot(opt, params)
    assert scaler.skipped_steps == 1
    _assert_same({k: v for k, v in after.items() if k.startswith("param")}, before)
    for key, value in after.items():  # what the skipped first step created holds nothing yet
        if key.startswith(("step", "exp_avg")):
            assert not np.any(value), key


def test_float16_scaler_on_cpu_keeps_the_unscale_path(rng):
    """cpu has no fused kernels: unscale in place, the step skipped on the
    host, as before (the gradients end unscaled)."""
    be, params, opt, grads = _setup("Adam", {}, "cpu", np.float32, rng)
    assert opt._takes_grad_scaling() is None
    scaler = amp.GradScaler(init_scale=SCALE)
    g = grads()
    _steps(be, opt, params, scaler, [g])
    np.testing.assert_array_equal(gpunet.to_numpy(params[1]._grad), g[1] / np.float32(SCALE))


@pytest.mark.no_kernels("asks which path a step would take; steps nothing")
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_array_only_optimizers_keep_the_unscale_path(device, rng):
    """An optimizer without fused kernels (RMSprop), or Adam with amsgrad,
    is not handed the flag: the scaler unscales and checks as on cpu."""
    require(device)
    be = gpunet.get_backend(device)
    p = Parameter(be.asarray(np.ones(4, np.float32)))
    p.grad = be.asarray(np.ones(4, np.float32))
    assert optim.RMSprop([p], device=device)._takes_grad_scaling() is None
    assert optim.Adam([p], amsgrad=True, device=device)._takes_grad_scaling() is None
    assert optim.Adam([p], device=device)._takes_grad_scaling() is be


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_nonfinite_check_kernel(device, rng, schedule):
    """One launch over float32, float16 and bfloat16 gradients (tails,
    whole quads, a misaligned view): an inf or NaN anywhere sets the flag,
    a clean list leaves it, and a set flag is never cleared."""
    require(device)
    be = gpunet.get_backend(device)
    k = be.kernels
    table = be.xp.empty(4 * k.OPTIM_TABLE_ENTRY_BYTES, np.uint8)
    host = [rng.standard_normal(13).astype(np.float32), rng.standard_normal(9).astype(np.float16),
            rng.standard_normal(17).astype(dtypes.bfloat16), rng.standard_normal(11).astype(np.float32)]

    def check(arrays, preset=0.0):
        flag = be.asarray(np.full(1, preset, np.float32))
        views = [be.asarray(a.view(np.int16) if a.dtype == dtypes.bfloat16 else a) for a in arrays]
        views[3] = be.asarray(np.concatenate([[0], arrays[3]]).astype(np.float32))[1:]  # 4 bytes off 16
        k.nonfinite_check(views, flag, table, be.stream())
        return float(gpunet.to_numpy(flag)[0])

    assert check(host) == 0.0 and check(host, preset=1.0) == 1.0
    for t, a in enumerate(host):
        for pos in (0, 6, a.size - 1):
            for bad in (np.inf, -np.inf, np.nan):
                planted = [x.copy() for x in host]
                planted[t][pos] = bad
                assert check(planted) == 1.0, (t, pos, bad)
    big = [np.full(3, 6e4, np.float16), np.full(3, 3e38, np.float32)]  # large but finite
    assert check(big + host[2:]) == 0.0
    # every value bad: many threads of several blocks set the flag at once (atomically: race checker clean)
    assert check([np.full(4096, np.nan, a.dtype) for a in host]) == 1.0


@pytest.mark.no_kernels("the arguments are refused before any launch")
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_float16_fused_scaler_bindings_refuse_bad_arguments(device):
    require(device)
    be = gpunet.get_backend(device)
    k, xp = be.kernels, be.xp
    table = xp.empty(2 * k.OPTIM_TABLE_ENTRY_BYTES, np.uint8)
    g, flag = xp.ones(5, np.float32), xp.zeros(1, np.float32)
    with pytest.raises(TypeError, match=r"argument 'grads\[1\]': expected dtype float32, float16 or bfloat16"):
        k.nonfinite_check([g, xp.ones(3, np.float64)], flag, table, 0)
    with pytest.raises(ValueError, match=r"argument 'grads\[0\]': must be C-contiguous"):
        k.nonfinite_check([xp.ones(10, np.float32)[::2]], flag, table, 0)
    with pytest.raises(ValueError, match="argument 'found_inf': expected one float32 element"):
        k.nonfinite_check([g], xp.zeros(2, np.float32), table, 0)
    with pytest.raises(TypeError, match="argument 'found_inf': expected dtype float32"):
        k.nonfinite_check([g], xp.zeros(1, np.int32), table, 0)
    with pytest.raises(ValueError, match="argument 'table': expected at least"):
        k.nonfinite_check([g, g, g], flag, table[:40], 0)
    with pytest.raises(ValueError, match=r"argument 'grads\[0\]': its memory overlaps that of 'found_inf'"):
        k.nonfinite_check([g], g[:1], table, 0)
    p = xp.zeros(5, np.float32)
    sgd = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, stream=0)
    with pytest.raises(ValueError, match="argument 'inv_scale': expected a finite number > 0"):
        k.sgd_multi([p], [g], [], [], table, **sgd, found_inf=flag, inv_scale=0.0)
    with pytest.raises(ValueError, match="argument 'inv_scale': must be 1 without found_inf"):
        k.sgd_multi([p], [g], [], [], table, **sgd, inv_scale=0.5)
    with pytest.raises(ValueError, match="argument 'found_inf': expected one float32 element"):
        k.adam_multi([p], [g], [xp.zeros(5, np.float32)], [xp.zeros(5, np.float32)], [0.1], [0.5], table, 0.1,
                     0.9, 0.999, 1e-8, 0.0, False, 0, found_inf=xp.zeros((1, 2), np.float32))
    overlap = r"'(found_inf|params\[0\])': its memory overlaps that of '(params\[0\]|found_inf)'"
    with pytest.raises(ValueError, match=overlap):
        k.sgd_multi([p], [g], [], [], table, **sgd, found_inf=p[2:3])
    assert not p.any() and not flag.any()


def test_float16_grad_scaler_refuses_a_closure():
    p = Parameter(np.ones(2, np.float32))
    p.grad = np.ones(2, np.float32)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        amp.GradScaler().step(opt, lambda: 0.0)
