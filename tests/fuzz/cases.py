"""What the fuzzer calls: hypothesis strategies that draw a call as plain
data (a spec: a dict of names, numbers, strings and array descriptions, so
that it pickles to a worker and prints in a report), and the code that makes
that call in the worker and checks its result against an oracle.

An array is described as ("A", shape, dtype, fill) and made in the worker
from the spec's seed. A check that finds a wrong result raises SilentWrong;
any other exception is the call's own error, which the runner classifies."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
from hypothesis import strategies as st


class SilentWrong(Exception):
    """The call returned, but its result disagrees with the oracle."""


# ---------------------------------------------------------------- drawing values
MOSTLY_F32 = ["float32"] * 6 + ["float64", "int64", "uint8", "bool"]
FILLS = ["normal"] * 5 + ["strided", "nan", "inf", "zeros", "large"]
# a size: mostly small and valid, sometimes zero, negative, absurd (2**36 float32
# parameters: 256 GiB, refused at once by any machine this runs on) or not an int
SIZE = st.one_of(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5),
                 st.sampled_from([0, -1, -7, 2**36, 2**40, 2**63, 2.5, "3", None, True]))
SMALL = st.integers(1, 4)
REAL = st.one_of(st.floats(-2, 2, allow_nan=False), st.sampled_from([0.0, 1e-8, math.nan, math.inf, -math.inf, 1e30]))


def arr(shape, dtypes=MOSTLY_F32, fills=FILLS):
    return st.tuples(st.just("A"), shape, st.sampled_from(dtypes), st.sampled_from(fills))


def dims(min_rank=0, max_rank=4, sizes=(0, 1, 2, 3, 4, 5)):
    return st.lists(st.sampled_from(sizes), min_size=min_rank, max_size=max_rank).map(tuple)


def materialize(v, rng):
    """The values of a spec: array descriptions become arrays."""
    if isinstance(v, tuple) and len(v) == 4 and v[0] == "A":
        _, shape, dtype, fill = v
        x = np.array(rng.standard_normal(shape) * (1e4 if fill == "large" else 2.0), np.float64)
        if fill == "zeros":
            x[...] = 0
        elif fill in ("nan", "inf") and x.size:
            x.reshape(-1)[rng.integers(0, x.size)] = np.nan if fill == "nan" else np.inf
        if dtype in ("int64", "uint8"):
            x = np.nan_to_num(np.abs(x), posinf=3, nan=1) % 5
        x = x.astype(dtype)
        if fill == "strided" and x.ndim:  # the same values, every other element of a wider array
            wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype)
            wide[..., ::2] = x
            x = wide[..., ::2]
        return x
    if isinstance(v, dict):
        return {k: materialize(x, rng) for k, x in v.items()}
    if isinstance(v, list):
        return [materialize(x, rng) for x in v]
    return v


def finite(*arrays) -> bool:
    return all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrays
               if isinstance(a, np.ndarray) and a.dtype.kind == "f")


def compare(got, want, what: str, tol: float = 1e-3, inputs_finite: bool = True):
    """got (a backend array) against want: same shape, same NaN/inf places,
    values within tol (relative to the reference's scale, float32 kernels)."""
    import gpunet
    got = np.asarray(gpunet.to_numpy(got), np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise SilentWrong(f"{what}: shape {got.shape}, the oracle's {want.shape}")
    if inputs_finite and np.isfinite(want).all() and not np.isfinite(got).all():
        raise SilentWrong(f"{what}: non-finite values from finite input")
    scale = max(1.0, float(np.abs(want[np.isfinite(want)]).max(initial=0)))
    if not np.allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True):
        bad = ~np.isclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True)
        raise SilentWrong(f"{what}: {int(bad.sum())} of {got.size} values differ from the oracle, "
                          f"e.g. {got[bad].reshape(-1)[:3]} instead of {want[bad].reshape(-1)[:3]}")


def torch_of(x):
    import torch
    return torch.from_numpy(np.array(x, order="C"))


# ---------------------------------------------------------------- functional forms
ACTS = ["relu", "leaky_relu", "sigmoid", "tanh", "softsign", "gelu", "softplus", "softmax", "log_softmax", "sign"]


@st.composite
def functional(draw):
    pick = picker(draw)
    fn = draw(st.sampled_from(ACTS))
    kw = {}
    if fn == "leaky_relu":
        kw["negative_slope"] = pick(one(0.01, 0.2, -1.0), REAL)
    elif fn == "gelu":
        kw["approximate"] = pick(one("none", "tanh"), one("bogus", 1))
    elif fn == "softplus":
        kw["beta"], kw["threshold"] = pick(one(1.0, 2.0, 0.5), REAL), pick(one(20.0, 1.0), one(math.nan, -1.0))
    elif fn in ("softmax", "log_softmax"):
        kw["dim"] = pick(one(-1, 0), one(1, 2, 5, -9, 1.5, "1"))
    return {"case": "functional", "fn": fn, "kw": kw,
            "x": pick(arr(dims(1, 4, (1, 2, 3, 5)), ["float32"], GOOD_FILLS), arr(dims()))}


def _torch_functional(fn, x, kw):
    import torch
    import torch.nn.functional as TF
    t = torch_of(x)
    if fn == "sign":
        return np.sign(x)
    if fn in ("softmax", "log_softmax"):
        return getattr(torch, fn)(t, kw["dim"]).numpy()
    if fn in ("sigmoid", "tanh"):
        return getattr(torch, fn)(t).numpy()
    return getattr(TF, fn)(t, **kw).numpy()


def run_functional(spec, x, be):
    import gpunet.functional as F
    out = getattr(F, spec["fn"])(be.asarray(x), **spec["kw"], device=be.name)
    compare(out, _torch_functional(spec["fn"], x, spec["kw"]), spec["fn"], inputs_finite=finite(x))


# ---------------------------------------------------------------- modules: construct, forward, backward
def picker(draw):
    """pick(good, bad): one call in two is benign (every argument valid, so
    that results meet their oracle); in the others each argument is hostile
    one time in three."""
    hostile = draw(st.booleans())

    def pick(good, bad):
        return draw(bad) if hostile and draw(st.integers(0, 2)) == 0 else draw(good)
    return pick


_ONE: dict = {}


def one(*values):
    """sampled_from, built once per value list (building and validating a new
    strategy at every draw would cost more than the draw)."""
    key = repr(values)
    if key not in _ONE:
        _ONE[key] = st.sampled_from(values)
    return _ONE[key]


GOOD_FILLS = ["normal"] * 4 + ["strided", "zeros", "large"]


@st.composite
def module(draw):
    pick = picker(draw)
    name = draw(one("Linear", "Conv1d", "Conv2d", "MaxPool2d", "AvgPool2d", "Embedding", "LayerNorm", "BatchNorm1d",
                    "Flatten", "Dropout", "ReLU", "Softmax", "GELU", "RNN", "LSTM", "GRU", "MultiheadAttention"))
    c, n = draw(SMALL), draw(one(0, 1, 2, 3))
    if name == "Linear":
        kw = {"in_features": pick(SMALL, SIZE), "out_features": pick(SMALL, SIZE), "bias": draw(st.booleans())}
        good = (n, kw["in_features"] if isinstance(kw["in_features"], int) else c)
    elif name in ("Conv1d", "Conv2d"):
        kw = {"in_channels": pick(SMALL, SIZE), "out_channels": pick(SMALL, SIZE),
              "kernel_size": pick(one(1, 2, 3), one(0, -1, (1, 2), 2**40)), "stride": pick(one(1, 2), one(0, -1)),
              "padding": pick(one(0, 1), one(-1, 9)), "dilation": pick(one(1, 2), one(0, -3))}
        ch = kw["in_channels"] if isinstance(kw["in_channels"], int) else c
        good = (n, ch, 6) if name == "Conv1d" else (n, ch, 6, 5)
    elif name in ("MaxPool2d", "AvgPool2d"):
        kw = {"kernel_size": pick(one(1, 2, 3), one(0, -2, (2, 1), 2**62)), "stride": pick(one(None, 1, 2), one(0, -1)),
              "padding": pick(one(0, 1), one(5, -1))}
        good = (n, c, 5, 4)
    elif name == "Embedding":
        kw = {"num_embeddings": pick(SMALL, SIZE), "embedding_dim": pick(SMALL, SIZE),
              "padding_idx": pick(one(None, 0, 1), one(-1, 99, 2**70))}
        return {"case": "module", "name": name, "kw": kw, "backward": pick(one("none", "ok"), one("twice")),
                "x": pick(one(("A", (n, 3), "int64", "normal"), ("A", (4,), "int64", "normal")),
                          one(("A", (2,), "float32", "normal"), ("A", (2,), "uint8", "normal"))),
                "idx": draw(st.lists(st.integers(-3, 9), min_size=0, max_size=4)), "train": True}
    elif name == "LayerNorm":
        kw = {"normalized_shape": pick(one(c, (2, 3)), SIZE), "eps": pick(one(1e-5, 0.1), REAL)}
        f = kw["normalized_shape"]
        good = (n + 1, f) if isinstance(f, int) else (n, 2, 3)
    elif name == "BatchNorm1d":
        kw = {"num_features": pick(SMALL, SIZE), "eps": pick(one(1e-5, 0.1), REAL), "momentum": pick(one(0.1, None), one(1.5, -1))}
        good = (n + 2, kw["num_features"] if isinstance(kw["num_features"], int) else c)
    elif name == "Flatten":
        kw = {"start_dim": pick(st.integers(0, 1), st.integers(-4, 3)), "end_dim": pick(one(-1, 2), st.integers(-4, 3))}
        good = (n, 2, 3)
    elif name == "Dropout":
        kw = {"p": pick(one(0.0, 0.5, 1.0), one(-0.1, 1.5, math.nan))}
        good = (n, 4)
    elif name == "Softmax":
        kw = {"dim": pick(one(-1, 0, 1), one(3, None, 1.5))}
        good = (n, 4)
    elif name == "GELU":
        kw = {"approximate": pick(one("none", "tanh"), one("x", None))}
        good = (n, 4)
    elif name in ("RNN", "LSTM", "GRU"):
        kw = {"input_size": pick(SMALL, SIZE), "hidden_size": pick(SMALL, SIZE), "num_layers": pick(one(1, 2), one(0, -1)),
              "batch_first": draw(st.booleans()), "bidirectional": draw(st.booleans())}
        i = kw["input_size"] if isinstance(kw["input_size"], int) else c
        good = (3, n, i)
    elif name == "MultiheadAttention":
        kw = {"embed_dim": pick(one(4, 6), one(0, -2, 2.5)), "num_heads": pick(one(1, 2), one(3, 0)),
              "batch_first": draw(st.booleans())}
        e = kw["embed_dim"] if isinstance(kw["embed_dim"], int) else 4
        good = (n, 3, e)
    else:
        kw, good = {}, (n, 3)
    good = tuple(min(max(int(d), 0), 9) for d in good)
    return {"case": "module", "name": name, "kw": kw, "train": draw(st.booleans()),
            "x": pick(arr(st.just(good), ["float32"], GOOD_FILLS), arr(dims(0, 5, (0, 1, 2, 3, 6)))),
            "backward": pick(one("none", "ok", "ok"), one("wrong_shape", "twice", "before_forward"))}


def _torch_module(spec, ours):
    """The PyTorch twin of module `ours` with the same parameters, or None."""
    import torch
    kw = dict(spec["kw"])
    if spec["name"] == "Embedding" and kw.get("padding_idx") is not None:
        return None  # PyTorch zeroes the padding row at construction; gpunet too, but the draw copies ours
    theirs = getattr(torch.nn, spec["name"])(**kw).double()
    sd = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd, strict=False)
    return theirs.train(spec["train"])


def run_module(spec, x, be):
    import torch
    import gpunet
    from gpunet import nn
    m = getattr(nn, spec["name"])(**spec["kw"]).to(be.name).train(spec["train"])
    if spec["name"] == "Embedding":
        x = np.array(spec["idx"], np.int64) if spec["idx"] and x.dtype == np.int64 and x.ndim == 1 else x
    if spec["backward"] == "before_forward":
        m.backward(be.asarray(np.ones((1,), np.float32)))
        raise SilentWrong("backward before any forward returned")
    y = m(be.asarray(x))
    out = y[0] if isinstance(y, tuple) else y
    stochastic = spec["train"] and spec["name"] in ("Dropout", "RNN", "LSTM", "GRU", "MultiheadAttention")
    theirs = None if stochastic or x.dtype.kind != "f" and spec["name"] != "Embedding" else _torch_module(spec, m)
    tx = torch_of(x.astype(np.float64) if x.dtype.kind == "f" else x).requires_grad_(x.dtype.kind == "f")
    want = None
    if theirs is not None:
        ty = theirs(*([tx] * 3 if spec["name"] == "MultiheadAttention" else [tx]))
        want = ty[0] if isinstance(ty, tuple) else ty
        compare(out, want.detach().numpy(), f"{spec['name']} forward", inputs_finite=finite(x))
    elif x.dtype.kind == "f" and finite(x) and not finite(gpunet.to_numpy(out)):
        raise SilentWrong(f"{spec['name']} forward: non-finite output from finite input")
    if spec["backward"] == "none" or spec["name"] == "MultiheadAttention":
        return
    g = np.ones(gpunet.to_numpy(out).shape, np.float32)
    if spec["backward"] == "wrong_shape":
        g = np.ones(g.shape + (2,), np.float32)
    grads = m.backward(be.asarray(g)) if not isinstance(y, tuple) else m.backward(be.asarray(g), None)
    if spec["backward"] == "wrong_shape":
        raise SilentWrong(f"backward took a gradient of shape {g.shape} for an output of {out.shape}")
    if spec["backward"] == "twice":
        m.backward(be.asarray(g))
        raise SilentWrong("a second backward without a forward returned")
    dx = grads[0] if isinstance(grads, tuple) else grads
    if want is not None and dx is not None and tx.requires_grad and spec["name"] not in ("RNN", "LSTM", "GRU"):
        want.backward(torch.from_numpy(g.astype(np.float64)))
        if tx.grad is not None:
            compare(dx, tx.grad.numpy(), f"{spec['name']} backward", inputs_finite=finite(x))


# ---------------------------------------------------------------- losses
LOSSES = ["CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "HuberLoss", "SmoothL1Loss"]


@st.composite
def loss(draw):
    pick = picker(draw)
    name = draw(st.sampled_from(LOSSES))
    kw = {"reduction": pick(one("mean", "sum", "none"), one("bogus", None))}
    n, c = draw(one(0, 1, 3)), draw(one(1, 2, 4))
    if name in ("CrossEntropyLoss", "NLLLoss"):
        kw["ignore_index"] = pick(one(-100, 0, 1), one(2**70, 1.5))
        if name == "CrossEntropyLoss":
            kw["label_smoothing"] = pick(one(0.0, 0.1, 1.0), one(-0.5, math.nan))
        target = pick(st.tuples(st.just("T"), st.lists(st.integers(0, c - 1), min_size=n, max_size=n)),
                      st.one_of(st.tuples(st.just("T"), st.lists(st.integers(-2, c + 1), min_size=n, max_size=n)),
                                arr(dims(1, 2, (0, 1, 3)))))
    else:
        target = pick(arr(st.just((n, c)), ["float32"], GOOD_FILLS),
                      arr(one((c,), (n + 1, c), (n, c)), ["float64", "int64", "float32"]))
        if name in ("HuberLoss", "SmoothL1Loss"):
            kw["delta" if name == "HuberLoss" else "beta"] = pick(one(1.0, 0.5), one(0.0, -1.0, math.nan))
    return {"case": "loss", "name": name, "kw": kw, "backward": draw(st.booleans()), "target": target,
            "x": pick(arr(st.just((n, c)), ["float32"], GOOD_FILLS), arr(one((n,), (n, c, 2), (n, c))))}


def run_loss(spec, x, be, target):
    import torch
    from gpunet import nn
    if isinstance(spec["target"], tuple) and spec["target"][0] == "T":
        target = np.array(spec["target"][1], np.int64)
    crit = getattr(nn, spec["name"])(**spec["kw"]).to(be.name)
    value = crit(be.asarray(x), be.asarray(target))
    tx = torch_of(x.astype(np.float64)).requires_grad_()
    tt = torch_of(target if target.dtype == np.int64 and spec["name"] in ("CrossEntropyLoss", "NLLLoss")
                  else target.astype(np.float64))
    if spec["name"] in ("CrossEntropyLoss", "NLLLoss") and tt.numel() and (
            (tt < 0) | (tt >= max(x.shape[-1] if x.ndim > 1 else 0, 1))).logical_and(tt != spec["kw"]["ignore_index"]).any():
        raise SilentWrong(f"a target outside [0, C) was accepted: {target}")
    want = getattr(torch.nn, spec["name"])(**spec["kw"])(tx, tt)
    compare(value, want.detach().numpy(), f"{spec['name']} value", inputs_finite=finite(x))
    if spec["backward"] and want.requires_grad and spec["kw"]["reduction"] != "none":
        dx = crit.backward()
        want.backward()
        compare(dx, tx.grad.numpy(), f"{spec['name']} gradient", inputs_finite=finite(x))


# ---------------------------------------------------------------- optimizers and schedulers
OPTS = {"SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov"], "Adam": ["lr", "betas", "eps", "weight_decay"],
        "AdamW": ["lr", "betas", "eps", "weight_decay"], "RMSprop": ["lr", "alpha", "eps", "momentum", "centered"],
        "Adagrad": ["lr", "lr_decay", "eps"], "Rprop": ["lr", "etas", "step_sizes"], "Adamax": ["lr", "betas", "eps"],
        "NAdam": ["lr", "betas", "eps"], "RAdam": ["lr", "betas", "eps"], "Adadelta": ["lr", "rho", "eps"]}
HYPER = {"lr": st.sampled_from([0.1, 0.01, 0.0, -0.1, math.nan, math.inf, "0.1"]),
         "momentum": st.sampled_from([0.0, 0.9, -0.5, math.nan]), "dampening": st.sampled_from([0.0, 0.1]),
         "weight_decay": st.sampled_from([0.0, 0.01, -1.0, math.inf]), "nesterov": st.booleans(),
         "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9), (1.0, 0.9), (-0.1, 0.9), 0.9, (0.9,), (math.nan, 0.9)]),
         "eps": st.sampled_from([1e-8, 1e-3, 0.0, -1e-8, math.nan]), "alpha": st.sampled_from([0.99, 0.5, 1.5]),
         "centered": st.booleans(), "lr_decay": st.sampled_from([0.0, 0.1, -0.1]),
         "etas": st.sampled_from([(0.5, 1.2), (1.2, 0.5), (0.5,), (math.nan, 1.2)]),
         "step_sizes": st.sampled_from([(1e-6, 50.0), (1.0, 0.1), (0.0,)]), "rho": st.sampled_from([0.9, 1.5, -0.1])}


GOOD_HYPER = {"lr": one(0.1, 0.01), "momentum": one(0.0, 0.9), "weight_decay": one(0.0, 0.01),
              "betas": one((0.9, 0.999), (0.5, 0.9)), "eps": one(1e-8, 1e-3), "alpha": one(0.99, 0.5),
              "lr_decay": one(0.0, 0.1), "etas": one((0.5, 1.2)), "step_sizes": one((1e-6, 50.0)), "rho": one(0.9)}


@st.composite
def optimizer(draw):
    pick = picker(draw)
    name = draw(st.sampled_from(sorted(OPTS)))
    kw = {k: pick(GOOD_HYPER.get(k, HYPER[k]), HYPER[k]) for k in OPTS[name] if draw(st.booleans())}
    return {"case": "optimizer", "name": name, "kw": kw, "steps": draw(st.integers(1, 3)),
            "grad": draw(arr(st.just((3, 2)), ["float32"], ["normal"] * 4 + ["nan", "zeros"]))}


def run_optimizer(spec, be, grad):
    import torch
    import gpunet
    from gpunet import nn, optim
    lin = nn.Linear(2, 3, bias=False).to(be.name)
    w0 = gpunet.to_numpy(lin.weight.data).astype(np.float64)
    opt = getattr(optim, spec["name"])(lin.parameters(), **spec["kw"])
    tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    theirs = getattr(torch.optim, spec["name"])([tw], **spec["kw"])
    for s in range(spec["steps"]):
        g = grad * (s + 1)
        lin.weight.grad = be.asarray(g)
        opt.step()
        tw.grad = torch.from_numpy(g.astype(np.float64))
        theirs.step()
    if finite(grad):  # PyTorch's own paths (foreach or not) differ on NaN gradients: no oracle there
        compare(lin.weight.data, tw.detach().numpy(), f"{spec['name']} step", tol=2e-3)


SCHEDS = {"StepLR": {"step_size": st.sampled_from([1, 2, 0, -1]), "gamma": st.sampled_from([0.1, 0.5, 0.0, math.nan])},
          "MultiStepLR": {"milestones": st.sampled_from([[1, 3], [3, 1], [], [2, 2], "1"]), "gamma": st.sampled_from([0.1, 2.0])},
          "ExponentialLR": {"gamma": st.sampled_from([0.9, 1.0, 0.0, -1.0, math.inf])},
          "CosineAnnealingLR": {"T_max": st.sampled_from([1, 3, 0, -2]), "eta_min": st.sampled_from([0.0, 0.01, 1.0])},
          "LinearLR": {"start_factor": st.sampled_from([0.5, 1.0, 0.0, 2.0]), "end_factor": st.sampled_from([1.0, 0.5, 1.5]),
                       "total_iters": st.sampled_from([1, 4, 0])}}


@st.composite
def scheduler(draw):
    name = draw(st.sampled_from(sorted(SCHEDS)))
    kw = {k: draw(s) for k, s in SCHEDS[name].items() if k in ("gamma", "T_max") or draw(st.booleans())}
    if name == "StepLR":
        kw.setdefault("step_size", 1)
    if name == "MultiStepLR":
        kw.setdefault("milestones", [1])
    return {"case": "scheduler", "name": name, "kw": kw, "steps": draw(st.integers(0, 6))}


def run_scheduler(spec, be):
    import torch
    from gpunet import nn, optim
    lin = nn.Linear(2, 2).to(be.name)
    opt = optim.SGD(lin.parameters(), lr=0.1)
    sched = getattr(optim.lr_scheduler, spec["name"])(opt, **spec["kw"])
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    tsched = getattr(torch.optim.lr_scheduler, spec["name"])(topt, **spec["kw"])
    got, want = [], []
    for _ in range(spec["steps"]):
        opt.step(), sched.step(), topt.step(), tsched.step()
        got.append(opt.param_groups[0]["lr"]), want.append(topt.param_groups[0]["lr"])
    compare(np.array(got), np.array(want), f"{spec['name']} learning rates", tol=1e-9)


# ---------------------------------------------------------------- checkpoints
@st.composite
def serialization(draw):
    return {"case": "serialization", "how": draw(st.sampled_from(["roundtrip", "truncate", "flip", "garbage", "empty",
                                                                  "bad_path", "directory", "unsavable", "missing"])),
            "at": draw(st.integers(0, 10**6)), "obj": draw(st.sampled_from(["model", "optimizer", "nest"]))}


def run_serialization(spec, be):
    import gpunet
    from gpunet import nn, optim
    model = nn.Linear(3, 2).to(be.name)
    obj = {"model": model.state_dict(), "optimizer": optim.Adam(model.parameters()).state_dict(),
           "nest": {"a": [np.arange(3.0), (1, "x", None)], 7: np.float32(2.5)}}[spec["obj"]]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ck.gpunet")
        how = spec["how"]
        if how == "bad_path":
            return gpunet.save(obj, 3.5)
        if how == "directory":
            return gpunet.save(obj, d)
        if how == "unsavable":
            return gpunet.save({"f": print}, path)
        if how == "missing":
            return gpunet.load(path + ".none")
        gpunet.save(obj, path)
        data = bytearray(open(path, "rb").read())
        if how == "truncate":
            data = data[:spec["at"] % len(data)]
        elif how == "flip":
            data[spec["at"] % len(data)] ^= 1 << (spec["at"] % 8)
        elif how == "garbage":
            data = bytearray(np.random.default_rng(spec["at"]).bytes(200))
        elif how == "empty":
            data = bytearray()
        with open(path, "wb") as f:
            f.write(data)
        back = gpunet.load(path)
        if how == "roundtrip":
            _same_tree(obj, back)


def _same_tree(a, b):
    import gpunet
    if isinstance(a, dict):
        if list(a) != list(b):
            raise SilentWrong(f"keys {list(a)} came back as {list(b)}")
        for k in a:
            _same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise SilentWrong("a sequence changed length")
        for x, y in zip(a, b):
            _same_tree(x, y)
    elif isinstance(a, (np.ndarray, np.generic)) or hasattr(a, "__array__"):
        if not np.array_equal(gpunet.to_numpy(a), np.asarray(b), equal_nan=True):
            raise SilentWrong("an array changed in the round trip")
    elif a != b:
        raise SilentWrong(f"{a!r} came back as {b!r}")


# ---------------------------------------------------------------- data
@st.composite
def data(draw):
    pick = picker(draw)
    n = draw(st.integers(0, 9))
    return {"case": "data", "what": draw(one("loader", "subset", "split")), "n": n,
            "batch_size": pick(one(1, 3, 4), one(0, -1, None, 2.0)), "shuffle": draw(st.booleans()),
            "drop_last": draw(st.booleans()),
            "indices": pick(st.lists(st.integers(-n, n - 1), max_size=5) if n else st.just([]),
                            st.one_of(st.lists(st.integers(-10, 10), max_size=5), one([0.5, 1.0], [[0]]))),
            "lengths": pick(one([0.5, 0.5], [n], [0.2, 0.8], [n // 2, n - n // 2]), one([1, 2], [0.3, 0.3], [-1, 5], [2.5]))}


def run_data(spec, be):
    from gpunet.data import DataLoader, Subset, TensorDataset, random_split
    n = spec["n"]
    ds = TensorDataset(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.int64))
    if spec["what"] == "loader":
        got = [b for b in DataLoader(ds, batch_size=spec["batch_size"], shuffle=spec["shuffle"],
                                     drop_last=spec["drop_last"])]
        xs = np.concatenate([np.asarray(b[0]) for b in got]) if got else np.zeros(0)
        bs = spec["batch_size"]
        want = n - n % bs if spec["drop_last"] else n
        if sorted(xs.tolist()) != sorted(range(n))[:want] and not spec["shuffle"] or len(xs) != want:
            raise SilentWrong(f"DataLoader gave {xs.tolist()} for {n} items in batches of {bs}")
        if any(not np.array_equal(np.asarray(b[0]).astype(np.int64), np.asarray(b[1])) for b in got):
            raise SilentWrong("a batch's tensors do not line up")
    elif spec["what"] == "subset":
        sub = Subset(ds, spec["indices"])
        got = [int(sub[i][1]) for i in range(len(sub))]
        want = [int(np.arange(n)[i]) for i in spec["indices"]]
        if got != want:
            raise SilentWrong(f"Subset gave {got} instead of {want}")
    else:
        parts = random_split(ds, spec["lengths"])
        items = sorted(int(p[i][1]) for p in parts for i in range(len(p)))
        if items != list(range(n)):
            raise SilentWrong(f"random_split of {n} items by {spec['lengths']} gave {items}")


# ---------------------------------------------------------------- raw bindings of gpunet._C_sim
LAYOUTS = ["c"] * 5 + ["transposed", "strided", "negative", "overlap", "same", "readonly", "list"]
BINDINGS = ["act_forward", "softmax_forward", "bias_add", "bias_grad", "dropout_apply", "layernorm_forward",
            "embedding_forward", "cross_entropy_forward", "attention_forward", "maxpool2d_forward", "im2col"]
HUGE = st.sampled_from([0, -1, 2**31, 2**62 + 1, -2**63, 2**63 - 1])


@st.composite
def binding(draw):
    pick = picker(draw)
    name = draw(st.sampled_from(BINDINGS))
    r, c = draw(one(0, 1, 3, 40)), draw(one(1, 2, 5, 33))
    f32 = ["float32"] * 5 + ["float64", "int64"]
    return {"case": "binding", "name": name, "layout": pick(one("c"), one(*LAYOUTS)),
            "x": pick(arr(one((r, c), (1, r, c)), ["float32"], GOOD_FILLS), arr(one((r, c), (c,), (r, c, 2)), f32)),
            "ints": [pick(st.integers(1, 3), HUGE) for _ in range(8)], "real": pick(one(1.0, 0.5, 1e-5), REAL),
            "kind": pick(one("relu", "tanh", "gelu"), one("bogus")),
            "w": pick(arr(st.just((c,)), ["float32"]), arr(one((r,), (c, c), (0,)), f32)),
            "t": pick(arr(st.just((r,)), ["int64"]), arr(one((r,), (c,)), ["int32", "float32", "int64"]))}


def _lay(a, layout, other=None):
    """a (a fresh C-contiguous array) in the drawn memory layout."""
    if layout == "transposed" and a.ndim >= 2:
        return np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)
    if layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],) if a.ndim else (), a.dtype) if a.ndim else a
        if a.ndim:
            big = big[..., ::2]
            big[...] = a
        return big
    if layout == "negative" and a.ndim:
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "readonly":
        a.setflags(write=False)
    if layout == "list":
        return a.tolist()
    return a


def run_binding(spec, be, x, w, t):
    from gpunet import _C_sim as sim
    lay = spec["layout"]
    i = spec["ints"]
    inp = _lay(x, lay if lay not in ("readonly", "overlap", "same") else "c")

    def out(shape, dtype=np.float32):
        if lay in ("same", "overlap") and isinstance(inp, np.ndarray) and inp.dtype == dtype:
            flat = inp.reshape(-1) if inp.flags.c_contiguous else None
            n = math.prod(shape)
            if flat is not None and flat.size >= n + (1 if lay == "overlap" else 0):
                return flat[(1 if lay == "overlap" else 0):][:n].reshape(shape)
        return _lay(np.full(shape, np.nan, dtype), lay if lay in ("readonly", "list", "transposed", "negative") else "c")

    name = spec["name"]
    shape = np.shape(x)
    rows = shape[0] if shape else 0
    if name == "act_forward":
        y = out(shape)
        want = np.maximum(x, 0) if spec["kind"] == "relu" else np.tanh(x)  # before x may be written in place
        sim.act_forward(spec["kind"], inp, y, spec["real"], 0.0, i[0] if i[0] < 0 else 0)
        if spec["kind"] in ("relu", "tanh") and lay in ("c", "transposed", "negative", "strided", "same"):
            compare(y, want, "act_forward", inputs_finite=finite(x))
    elif name == "softmax_forward":
        y = out(shape)
        sim.softmax_forward(inp, y, spec["real"], bool(i[0] % 2), 0)
        if lay == "c" and x.ndim == 2 and math.isfinite(spec["real"]):
            import torch
            z = torch_of(x.astype(np.float64) * spec["real"])
            compare(y, (torch.log_softmax if i[0] % 2 else torch.softmax)(z, -1).numpy(), "softmax_forward",
                    inputs_finite=finite(x))
    elif name == "bias_add":
        b = _lay(w, lay)
        before = np.array(inp, np.float64) if isinstance(inp, np.ndarray) else None
        sim.bias_add(inp, b, i[0], 0)
        if lay == "c" and x.ndim == 2 and i[0] == 1 and w.shape == (x.shape[1],):
            compare(inp, before + w, "bias_add", inputs_finite=finite(x, w))
    elif name == "bias_grad":
        db = out(np.shape(w))
        sim.bias_grad(inp, db, i[0], 0)
        if lay == "c" and x.ndim == 2 and i[0] == 1 and w.shape == (x.shape[1],):
            compare(db, x.astype(np.float64).sum(0), "bias_grad", inputs_finite=finite(x))
    elif name == "dropout_apply":
        y = out(shape)
        sim.dropout_apply(inp, y, i[0], i[1], i[2], spec["real"], 0)
    elif name == "layernorm_forward":
        y, mean, rstd = out(shape), np.zeros(rows, np.float32), np.zeros(rows, np.float32)
        sim.layernorm_forward(inp, _lay(w, lay), _lay(w.copy(), lay), y, mean, rstd, spec["real"], 0)
    elif name == "embedding_forward":
        idx = _lay(t, lay)
        o = out((np.shape(t)[0], shape[-1] if shape else 0))
        flag = np.zeros(4, np.int64)
        sim.embedding_forward(inp, idx, o, flag, 0)
        if lay == "c" and x.ndim == 2 and t.dtype == np.int64 and flag[0] == 0:
            compare(o, x[t], "embedding_forward", inputs_finite=finite(x))
    elif name == "cross_entropy_forward":
        loss, lse, flag = out((rows,)), np.zeros((rows, 2), np.float32), np.zeros(4, np.int64)
        sim.cross_entropy_forward(inp, _lay(t, lay), _lay(w, lay), loss, lse, i[0], spec["real"], flag, 0)
    elif name == "attention_forward":
        q = inp if np.ndim(inp) == 3 else np.reshape(inp, (1,) + np.shape(inp)) if isinstance(inp, np.ndarray) else inp
        o, lse = out(np.shape(q)), np.zeros(np.shape(q)[:2], np.float32)
        bias = None if i[4] % 2 else _lay(w, lay)
        sim.attention_forward(q, q, q, bias, i[0], i[1], i[2], i[3], bool(i[5] % 2), spec["real"], o, lse, 0)
    elif name == "maxpool2d_forward":
        x4 = np.reshape(inp, (1, 1, -1, shape[-1])) if isinstance(inp, np.ndarray) and inp.size and inp.ndim >= 2 else inp
        y = out((1, 1, 2, 2))
        sim.maxpool2d_forward(x4, y, np.zeros((1, 1, 2, 2), np.int64), *i[:8], 0)
    elif name == "im2col":
        x4 = np.reshape(inp, (1, 1, -1, shape[-1])) if isinstance(inp, np.ndarray) and inp.size and inp.ndim >= 2 else inp
        sim.im2col(x4, out((4, 4)), *i[:8], 0)


STRATEGIES = {"functional": functional(), "module": module(), "loss": loss(), "optimizer": optimizer(),
              "scheduler": scheduler(), "serialization": serialization(), "data": data(), "binding": binding()}
RUNNERS = {"functional": run_functional, "module": run_module, "loss": run_loss, "optimizer": run_optimizer,
           "scheduler": run_scheduler, "serialization": run_serialization, "data": run_data, "binding": run_binding}
PUBLIC = [k for k in STRATEGIES if k != "binding"]


def run(spec: dict):
    """Makes the call `spec` describes (in a worker): returns on success,
    raises SilentWrong on a wrong result, or the call's own exception."""
    if spec["case"] == "__exec__":  # the runner's own tests: a crash, a hang, an error on demand
        return exec(spec["code"], {})
    import gpunet
    be = gpunet.get_backend(spec["backend"])
    gpunet.manual_seed(spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    arrays = {k: materialize(v, rng) for k, v in spec.items()
              if isinstance(v, tuple) and len(v) == 4 and v[0] == "A"}
    if spec["case"] == "loss" and "target" not in arrays:
        arrays["target"] = None
    RUNNERS[spec["case"]](spec, be=be, **arrays)
