"""The CuPy fusions (beside their ops in gpunet/ops) against the cpu
reference: activation backward, LSTM cell, softmax cross-entropy, SGD/Adam/
AdamW, col2im and embedding backward; plus streams and device indices.

Everything but the first test needs CuPy with a GPU and skips with the reason
otherwise. (The rest of the suite runs on cupy too, through the `device` and
`kernel_device` fixtures.)"""
import subprocess
import sys

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.ops import conv as conv_ops
from gpunet.testing import assert_close, compare_module, compare_training, tolerances

_status = gpunet.backends()["cupy"]
needs_cupy = pytest.mark.skipif(not _status["available"], reason=f"backend 'cupy' unavailable: {_status['reason']}")
DTYPES = [np.float32, np.float64]


def test_import_compiles_nothing():
    """Kernels are built on first use: importing gpunet (and the fusions) must
    neither import CuPy nor build a kernel, so machines without a GPU pay nothing."""
    code = ("import sys\n"
            "class NoCupy:  # any attempt to import CuPy fails loudly, installed or not\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        assert name.split('.')[0] not in ('cupy', 'cupyx'), 'importing gpunet imports ' + name\n"
            "sys.meta_path.insert(0, NoCupy())\n"
            "import gpunet\n"
            "from gpunet.ops import activation, cupy_kernels, loss, optim, rnn\n"
            "built = [k.__name__ for k in (activation._fused_backward_kernel, rnn._fused_cell_kernels, "
            "loss._fused_kernels, optim._fused_kernels, cupy_kernels._raw_kernel) if k.cache_info().currsize]\n"
            "assert not built, built\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- activations
ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.3), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "softsign": nn.Softsign, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh"),
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=3.0),
}


@needs_cupy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward(name, dtype, rng):
    x = (rng.standard_normal((7, 33)) * 3).astype(dtype)
    x[0, :3] = 0.0  # the kinks
    compare_module(ACTIVATIONS[name]().to(dtype), (x,), devices=("cpu", "cupy"), n=64)


@needs_cupy
def test_activation_backward_strided_gradient(rng):
    """The fused kernel takes dy through its strides (a transposed view)."""
    from gpunet.ops.activation import act_backward, act_forward
    be = gpunet.get_backend("cupy")
    x = rng.standard_normal((6, 5)).astype(np.float32)
    dy = rng.standard_normal((5, 6)).astype(np.float32).T
    y, ctx = act_forward(be, "softsign", be.asarray(x))
    dx = act_backward(be, ctx, be.asarray(np.ascontiguousarray(dy.T)).T)
    assert_close(dx, dy / (1 + np.abs(x)) ** 2, name="softsign dx")


# ---------------------------------------------------------------- LSTM
@needs_cupy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state", [True, False])
def test_lstm(state, dtype, rng):
    lstm = nn.LSTM(5, 6, num_layers=2, batch_first=True).to(dtype)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    inputs = (x, (rng.standard_normal((2, 3, 6)).astype(dtype), rng.standard_normal((2, 3, 6)).astype(dtype))) \
        if state else (x,)
    compare_module(lstm, inputs, devices=("cpu", "cupy"), n=1024)


@needs_cupy
def test_lstm_cell(rng):
    cell = nn.LSTMCell(4, 7)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    compare_module(cell, (x,), devices=("cpu", "cupy"), n=256)


# ---------------------------------------------------------------- cross-entropy
@needs_cupy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,smoothing,spatial", [
    (False, 0.0, False), (True, 0.0, False), (False, 0.2, False), (True, 0.1, True),
])
def test_cross_entropy(weighted, smoothing, spatial, reduction, dtype, rng):
    c = 11
    shape = (6, c, 2, 3) if spatial else (9, c)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, c, (shape[0],) + shape[2:])
    t.reshape(-1)[::4] = -100  # ignored rows
    weight = rng.uniform(0.5, 2.0, c) if weighted else None
    crit = nn.CrossEntropyLoss(weight=weight, reduction=reduction, label_smoothing=smoothing).to(dtype)
    compare_module(crit, (x, t), devices=("cpu", "cupy"), n=256)


# ---------------------------------------------------------------- optimizers
def _train(make_optimizer, dtype, rng):
    batches = [(rng.standard_normal((8, 5)), rng.integers(0, 3, 8)) for _ in range(4)]
    batches = [(x.astype(dtype), t) for x, t in batches]
    make_model = lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)  # noqa: E731
    # explicit tolerances: the losses come back as Python floats, which would get float64's
    rtol, atol = tolerances(dtype, n=4096)
    compare_training(make_model, lambda: nn.CrossEntropyLoss().to(dtype), make_optimizer, batches,
                     devices=("cpu", "cupy"), rtol=rtol, atol=atol)


OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd_decay": lambda p: optim.SGD(p, lr=0.1, weight_decay=0.01),
    "momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "nesterov": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=0.01),
    "adam_l2": lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


@needs_cupy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_updates(name, dtype, rng):
    _train(OPTIMIZERS[name], dtype, rng)


# ---------------------------------------------------------------- col2im
@needs_cupy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), ((2, 1), (1, 2), (2, 1), 2), (3, 2, 2, 3),
])
def test_conv2d(stride, padding, dilation, groups, dtype, rng):
    conv = nn.Conv2d(6, 6, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=groups).to(dtype)
    x = rng.standard_normal((2, 6, 9, 8)).astype(dtype)
    compare_module(conv, (x,), devices=("cpu", "cupy"), n=256)


@needs_cupy
@pytest.mark.parametrize("geometry", [
    dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1),
    dict(stride=(2, 3), padding=(2, 1), dilation=(1, 2), groups=2),
])
def test_col2im_sums_in_the_array_path_order(geometry, rng):
    """The gather adds the same terms in the same order as conv._col2im_array: bit-identical."""
    x_shape, w_shape = (3, 4, 7, 9), (6, 4 // geometry["groups"], 3, 3)
    g = conv_ops.geometry(x_shape, w_shape, geometry["stride"], geometry["padding"], geometry["dilation"],
                          geometry["groups"])
    kg = w_shape[1] * g.kh * g.kw
    dcols = rng.standard_normal((g.groups, kg, x_shape[0] * g.oh * g.ow)).astype(np.float32)
    ref = conv_ops._col2im_array(np, dcols, x_shape, g)
    got = conv_ops._col2im_fused(gpunet.asarray(dcols, device="cupy"), x_shape, g)
    np.testing.assert_array_equal(gpunet.to_numpy(got), ref)


# ---------------------------------------------------------------- embedding
@needs_cupy
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_backward(padding_idx, rng):
    """Rows sum their positions in a fixed order: equal to cpu within rounding,
    and bit-identical from one run to the next."""
    emb = nn.Embedding(9, 5, padding_idx=padding_idx)
    idx = rng.integers(0, 9, (6, 13))  # many repeats; some rows never used
    dy = rng.standard_normal((6, 13, 5)).astype(np.float32)
    first = compare_module(emb, (idx,), devices=("cpu", "cupy"), grad_outputs=dy, n=64)
    again = compare_module(emb, (idx,), devices=("cupy",), grad_outputs=dy)
    np.testing.assert_array_equal(gpunet.to_numpy(first["cupy"][2]["weight"]),
                                  gpunet.to_numpy(again["cupy"][2]["weight"]))


# ---------------------------------------------------------------- streams and devices
@needs_cupy
def test_runs_on_the_current_stream(rng):
    import cupy
    be = gpunet.get_backend("cupy")
    lstm = nn.LSTM(3, 4)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    ref = lstm(x)[0]
    gpu = lstm.to("cupy")
    with cupy.cuda.Stream(non_blocking=True) as s:
        assert be.stream() == s.ptr
        out = gpu(be.asarray(x))[0]
    gpunet.synchronize("cupy")
    assert_close(out, ref, n=256, name="LSTM output computed on a side stream")


@needs_cupy
def test_second_gpu(rng):
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    lin = nn.Linear(3, 2).to("cupy:1")
    assert lin.weight.data.device.id == 1
    x0 = gpunet.asarray(rng.standard_normal((4, 3)).astype(np.float32), device="cupy:0")
    with pytest.raises(TypeError, match="GPU 1.*GPU 0"):
        lin(x0)
    x1 = gpunet.asarray(x0, device="cupy:1")
    assert x1.device.id == 1
    with gpunet.get_backend("cupy:1").use_device():  # CuPy launches on the current device
        y = lin(x1)
    assert_close(y, gpunet.to_numpy(x0) @ lin.state_dict()["weight"].T + lin.state_dict()["bias"])
