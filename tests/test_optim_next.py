"""SGD's and Adam/AdamW's remaining PyTorch options (maximize, amsgrad,
decoupled_weight_decay, the implementation switches) and Adagrad, Adadelta,
Adamax, NAdam, RAdam: several steps against torch.optim on the same
parameters and gradients, state_dict keys as PyTorch's and resuming, and on
the kernel backends (maximize through the fused kernels; amsgrad and the
array-only optimizers as recorded fallbacks) against cpu."""
import numpy as np
import pytest

import gpunet
from gpunet import optim
from gpunet.nn.module import Parameter
from gpunet.testing import assert_close

from test_optim import _compare, _data, _ids, _run_gpunet, _run_torch

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("sgd_multi", "adam_multi")

CONFIGS = [
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), amsgrad=True, maximize=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)),
    ("Adagrad", dict(lr=0.1, maximize=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.05, maximize=True)),
    ("Adamax", dict()),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-4, weight_decay=0.1, maximize=True)),
    ("NAdam", dict()),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict()),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    ("Rprop", dict(lr=0.05, maximize=True)),
]
STEPS = 8  # RAdam's rectified steps start at step 6 with beta2 = 0.999, at step 3 with 0.9


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_matches_torch(config, dtype, rng):
    torch = pytest.importorskip("torch")
    name, kw = config
    init, grads = _data(rng, dtype, steps=STEPS)
    _compare(_run_gpunet(name, kw, init, grads), _run_torch(torch, name, kw, init, grads), dtype)


def test_skips_params_without_grad_like_torch(rng):
    torch = pytest.importorskip("torch")
    init, grads = _data(rng, np.float64, steps=5)
    grads[0][1] = None
    grads[3][0] = None
    for name, kw in (("Adam", dict(lr=0.05, amsgrad=True)), ("NAdam", dict(lr=0.05)), ("Adagrad", dict(lr=0.1))):
        _compare(_run_gpunet(name, kw, init, grads), _run_torch(torch, name, kw, init, grads), np.float64)


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_state_dict_keys_like_torch(config, rng):
    torch = pytest.importorskip("torch")
    name, kw = config
    init, grads = _data(rng, np.float64, steps=2)
    params = [Parameter(w.copy()) for w in init]
    tparams = [torch.tensor(w, requires_grad=True) for w in init]
    opt, topt = getattr(optim, name)(params, **kw), getattr(torch.optim, name)(tparams, **kw)
    for p, tp, g in zip(params, tparams, grads[0]):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    opt.step()
    topt.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for i, state in ours["state"].items():
        assert sorted(state) == sorted(theirs["state"][i]), f"state[{i}]"
        for key, value in state.items():
            np.testing.assert_allclose(value, np.asarray(theirs["state"][i][key]), rtol=1e-12, err_msg=key)
    # every hyperparameter of ours but Rprop's backtrack is PyTorch's, with PyTorch's value
    group, tgroup = ours["param_groups"][0], theirs["param_groups"][0]
    assert set(group) - set(tgroup) <= {"backtrack"}
    assert {k: tgroup[k] for k in group if k in tgroup} == {k: v for k, v in group.items() if k in tgroup}


def test_implementation_switches():
    p = [Parameter(np.zeros(2))]
    optim.SGD(p, foreach=True, fused=False)
    optim.Adam(p, foreach=False, fused=True)
    optim.Adagrad(p, 0.1, 0, 0, 0, 1e-10, True)  # foreach is positional in PyTorch's Adagrad
    with pytest.raises(NotImplementedError, match="capturable=True"):
        optim.AdamW(p, capturable=True)
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        optim.RAdam(p, differentiable=True)
    with pytest.raises(TypeError, match="foreach: expected a bool or None"):
        optim.NAdam(p, foreach="yes")


def test_bad_hyperparameters():
    p = [Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="betas"):
        optim.NAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr_decay: expected a finite number >= 0"):
        optim.Adagrad(p, lr_decay=-0.1)
    with pytest.raises(ValueError, match="rho: expected a number in"):
        optim.Adadelta(p, rho=1.5)
    with pytest.raises(ValueError, match="momentum_decay"):
        optim.NAdam(p, momentum_decay=-1.0)
    with pytest.raises(ValueError, match="eps"):
        optim.Adamax(p, eps=-1.0)


# ------------------------------------------------------------------ kernel backends
KERNEL_SHAPES = [(3, 5), (129,), (1,)]


def _against_cpu(name, kw, device, rng, steps=3):
    init, grads = _data(rng, np.float32, steps=steps, shapes=KERNEL_SHAPES)
    ours = _run_gpunet(name, kw, init, grads, device=device)
    ref = _run_gpunet(name, kw, init, grads)
    for k, (a_step, b_step) in enumerate(zip(ours, ref)):
        for i, (a, b) in enumerate(zip(a_step, b_step)):
            assert_close(a, b, name=f"{name} on {device}, step {k + 1}, param {i}")


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, maximize=True)),
                                     ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
                                     ("AdamW", dict(lr=0.01, maximize=True))])
def test_maximize_runs_the_fused_kernels(name, kw, kernel_device, rng):
    _against_cpu(name, kw, kernel_device, rng)


ARRAY_ONLY = [("Adam", dict(lr=0.01, amsgrad=True), "adam amsgrad"), ("Adagrad", dict(lr=0.1), "adagrad"),
              ("Adadelta", dict(), "adadelta"), ("Adamax", dict(), "adamax"), ("NAdam", dict(), "nadam"),
              ("RAdam", dict(betas=(0.9, 0.9)), "radam")]


@pytest.mark.fallback(*[a[2] for a in ARRAY_ONLY])  # these leave the kernels by design
@pytest.mark.parametrize("name,kw,op", ARRAY_ONLY, ids=[a[2].replace(" ", "_") for a in ARRAY_ONLY])
def test_array_only_updates_on_kernel_backends(name, kw, op, kernel_device, rng):
    """No kernel for these: the array code runs there, and says so (a recorded fallback with its reason)."""
    before = gpunet.backend.fallbacks()
    _against_cpu(name, kw, kernel_device, rng)
    if gpunet.get_backend(kernel_device).kernels is not None:
        recorded = gpunet.backend.fallbacks() - before
        assert [key[1] for key in recorded if key[0] == op], recorded
