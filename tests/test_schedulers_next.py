"""The learning-rate schedulers PyTorch users reach for (LambdaLR, LinearLR,
SequentialLR and cosine with warm-up, OneCycleLR, CosineAnnealingWarmRestarts,
ReduceLROnPlateau): the lr (and momentum) sequence over many steps against
torch.optim.lr_scheduler, and resuming from state_dict."""
import copy
import math

import numpy as np
import pytest

from gpunet import optim
from gpunet.nn.module import Parameter

N = 40


class Warmup:
    """A callable object (its attributes go into LambdaLR's state_dict, as PyTorch's)."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, epoch):
        return min(1.0, (epoch + 1) / self.steps) * 0.97 ** epoch


def _optimizers(torch, kind="SGD"):
    """A gpunet and a torch optimizer with two parameter groups (lr 0.1 and 0.3)."""
    def make(lib, param):
        groups = [dict(params=[param()]), dict(params=[param()], lr=0.3)]
        if kind == "SGD":
            return lib.optim.SGD(groups, lr=0.1, momentum=0.9)
        return lib.optim.Adam(groups, lr=0.1)
    import gpunet
    return make(gpunet, lambda: Parameter(np.zeros(1))), make(torch, lambda: torch.zeros(1, requires_grad=True))


def _sequential(lib, opt):
    s = lib.optim.lr_scheduler
    return s.SequentialLR(opt, [s.LinearLR(opt, start_factor=0.1, total_iters=5),
                                s.CosineAnnealingLR(opt, T_max=N - 5, eta_min=1e-3)], milestones=[5])


def _three(lib, opt):
    s = lib.optim.lr_scheduler
    return s.SequentialLR(opt, [s.ConstantLR(opt, factor=0.5, total_iters=3) if lib.__name__ == "torch" else
                                s.LambdaLR(opt, lambda e: 0.5 if e < 3 else 1.0),
                                s.ExponentialLR(opt, gamma=0.9), s.StepLR(opt, step_size=4, gamma=0.5)],
                          milestones=[6, 20])


# (id, factory(lib, optimizer), optimizer kind, exact): exact where PyTorch's formula is closed, else to rounding
SCHEDULERS = [
    ("lambda", lambda lib, o: lib.optim.lr_scheduler.LambdaLR(o, lambda e: 0.95 ** e + 0.01 * e), "SGD", True),
    ("lambda_per_group", lambda lib, o: lib.optim.lr_scheduler.LambdaLR(o, [Warmup(6), lambda e: 1 / (1 + e)]),
     "SGD", True),
    ("linear", lambda lib, o: lib.optim.lr_scheduler.LinearLR(o), "SGD", False),
    ("linear_decay", lambda lib, o: lib.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.05,
                                                                    total_iters=25), "SGD", False),
    ("cosine_with_warmup", _sequential, "SGD", False),
    ("sequential_three", _three, "SGD", False),
    ("warm_restarts", lambda lib, o: lib.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=7), "SGD", True),
    ("warm_restarts_mult", lambda lib, o: lib.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 3, T_mult=2,
                                                                                             eta_min=0.01),
     "SGD", True),
    ("one_cycle", lambda lib, o: lib.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=N), "SGD", True),
    ("one_cycle_adam_linear_three_phase",
     lambda lib, o: lib.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.5, 2.0], epochs=4, steps_per_epoch=10,
                                                      pct_start=0.25, anneal_strategy="linear", three_phase=True,
                                                      base_momentum=0.8, max_momentum=[0.9, 0.95]), "Adam", True),
    ("one_cycle_no_momentum", lambda lib, o: lib.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.2, total_steps=N, cycle_momentum=False, div_factor=10.0, final_div_factor=100.0), "SGD", True),
]


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PyTorch's step(epoch)/order warnings
@pytest.mark.parametrize("name,factory,kind,exact", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_lr_sequence_matches_torch(name, factory, kind, exact):
    torch = pytest.importorskip("torch")
    import gpunet
    opt, topt = _optimizers(torch, kind)
    sched, tsched = factory(gpunet, opt), factory(torch, topt)
    for step in range(N):
        ours, theirs = sched.get_last_lr(), tsched.get_last_lr()
        if exact:
            assert ours == theirs, f"step {step}"
        else:  # PyTorch's recursive form: equal to a few units in the last place
            np.testing.assert_allclose(ours, theirs, rtol=4e-15, atol=0, err_msg=f"step {step}")
        assert [g["lr"] for g in opt.param_groups] == ours
        assert _momenta(opt) == _momenta(topt), f"step {step}"
        topt.step()
        if step < N - 1 or not name.startswith("one_cycle"):
            sched.step()
            tsched.step()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,factory,kind,exact", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_resumes_from_state_dict(name, factory, kind, exact):
    import gpunet

    def make():
        groups = [dict(params=[Parameter(np.zeros(1))]), dict(params=[Parameter(np.zeros(1))], lr=0.3)]
        opt = optim.SGD(groups, lr=0.1, momentum=0.9) if kind == "SGD" else optim.Adam(groups, lr=0.1)
        return opt, factory(gpunet, opt)

    opt, sched = make()
    straight = []
    for _ in range(N - 1):
        sched.step()
        straight.append((sched.get_last_lr(), _momenta(opt)))
    opt, sched = make()
    for _ in range(10):
        sched.step()
    saved = copy.deepcopy((opt.state_dict(), sched.state_dict()))
    opt, sched = make()
    opt.load_state_dict(saved[0])
    sched.load_state_dict(saved[1])
    for want in straight[10:]:
        sched.step()
        assert (sched.get_last_lr(), _momenta(opt)) == want


def test_lambda_state_dict_keeps_callable_objects_like_torch():
    torch = pytest.importorskip("torch")
    opt, topt = _optimizers(torch)
    fns = [Warmup(6), lambda e: 1.0]
    ours = optim.lr_scheduler.LambdaLR(opt, fns).state_dict()["lr_lambdas"]
    assert ours == torch.optim.lr_scheduler.LambdaLR(topt, [Warmup(6), lambda e: 1.0]).state_dict()["lr_lambdas"]
    assert ours == [{"steps": 6}, None]
    fns[0].steps = 2
    sched = optim.lr_scheduler.LambdaLR(opt, [Warmup(9), lambda e: 1.0])
    sched.load_state_dict(optim.lr_scheduler.LambdaLR(opt, fns).state_dict())
    assert sched.lr_lambdas[0].steps == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("T_mult", [1, 2, 3])
def test_warm_restarts_fractional_epochs_like_torch(T_mult):
    torch = pytest.importorskip("torch")
    opt, topt = _optimizers(torch)
    sched = optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=T_mult, eta_min=0.001)
    tsched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(topt, T_0=4, T_mult=T_mult, eta_min=0.001)
    iters = 3
    for epoch in range(20):
        for i in range(iters):
            sched.step(epoch + i / iters)
            tsched.step(epoch + i / iters)
            assert sched.get_last_lr() == tsched.get_last_lr(), (epoch, i)
    assert sched.last_epoch == tsched.last_epoch


PLATEAU = [
    dict(),
    dict(mode="max", factor=0.5, patience=2, threshold=0.01, cooldown=2),
    dict(patience=1, threshold=0.05, threshold_mode="abs", min_lr=[0.02, 0.05]),
    dict(mode="max", patience=0, threshold_mode="abs", min_lr=0.01, eps=1e-3),
]


@pytest.mark.parametrize("kw", PLATEAU, ids=[str(i) for i in range(len(PLATEAU))])
def test_reduce_on_plateau_matches_torch(kw):
    torch = pytest.importorskip("torch")
    opt, topt = _optimizers(torch)
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    rng = np.random.default_rng(7)
    metrics = np.concatenate([np.linspace(1.0, 0.5, 8), 0.5 + 0.02 * rng.standard_normal(40)])
    if kw.get("mode") == "max":
        metrics = -metrics
    for k, m in enumerate(metrics):
        sched.step(m)
        tsched.step(m)
        assert sched.get_last_lr() == tsched.get_last_lr(), f"epoch {k}"
        assert (sched.best, sched.num_bad_epochs, sched.cooldown_counter) == \
            (tsched.best, tsched.num_bad_epochs, tsched.cooldown_counter)
    assert sched.get_last_lr() != [0.1, 0.3], "the sequence should have reduced the lr"
    opt2 = _optimizers(torch)[0]
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    resumed = optim.lr_scheduler.ReduceLROnPlateau(opt2, **kw)
    resumed.load_state_dict(copy.deepcopy(sched.state_dict()))
    for m in metrics[:12]:
        sched.step(m)
        resumed.step(m)
        assert resumed.get_last_lr() == sched.get_last_lr()


def test_bad_arguments():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    s = optim.lr_scheduler
    with pytest.raises(ValueError, match="lr_lambda: expected one value per parameter group"):
        s.LambdaLR(opt, [lambda e: 1.0, lambda e: 1.0])
    with pytest.raises(TypeError, match=r"lr_lambda\[0\]: expected a callable"):
        s.LambdaLR(opt, 0.5)
    with pytest.raises(ValueError, match="start_factor"):
        s.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="total_iters"):
        s.LinearLR(opt, total_iters=0)
    with pytest.raises(ValueError, match="milestones: expected 1"):
        s.SequentialLR(opt, [s.LinearLR(opt), s.ExponentialLR(opt, 0.9)], milestones=[])
    other = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"schedulers\[1\]: belongs to another optimizer"):
        s.SequentialLR(opt, [s.LinearLR(opt), s.ExponentialLR(other, 0.9)], milestones=[3])
    with pytest.raises(TypeError, match=r"schedulers\[0\]: expected an epoch-driven scheduler"):
        s.SequentialLR(opt, [s.ReduceLROnPlateau(opt)], milestones=[])
    with pytest.raises(ValueError, match="T_mult"):
        s.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=0)
    with pytest.raises(ValueError, match="total_steps: give total_steps"):
        s.OneCycleLR(opt, max_lr=1.0)
    with pytest.raises(ValueError, match="pct_start"):
        s.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=1)
    with pytest.raises(ValueError, match="cycle_momentum"):
        s.OneCycleLR(optim.Rprop([Parameter(np.zeros(1))]), max_lr=1.0, total_steps=10)
    sched = s.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(2):
        sched.step()
    with pytest.raises(ValueError, match="past total_steps=3"):
        sched.step()
        sched.step()
    with pytest.raises(ValueError, match="factor"):
        s.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        s.ReduceLROnPlateau(opt, mode="lowest")
    assert math.isfinite(s.ReduceLROnPlateau(opt).get_last_lr()[0])
