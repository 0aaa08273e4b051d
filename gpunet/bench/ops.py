"""Op-level cases: one kernel family at one shape, gpunet's module against the
same computation in PyTorch, forward (fwd) or forward + backward (fwdbwd).

A case is named family.op.pass (family.pass where the op is the family's
namesake): the family is the one name of csrc/kernels/<family>.cu,
gpunet/ops/<family>.py and tests/test_<family>.py, so `--ops norm` runs every
normalisation case. Results recorded before this scheme use the bare op
names (bench/results/README.md lists them).

Shapes per size ("quick": tiny, the CI smoke test; "cpu": a 2-core machine in
minutes; "gpu": the issue's shapes):

  case                   gpu                              cpu
  linear                 8192x4096 -> 4096                2048x1024 -> 1024
  conv.conv2d            (64,64,56,56)->64, (64,256,14,14)->256, 3x3 pad 1
                                                          (64,3,32,32)->32, (32,64,16,16)->64
  pool.max/avgpool2d     3x3/2 pad 1 on (64,64,112,112)   (16,64,56,56)
  softmax, loss.cross_entropy
                         8192x50257, 65536x1024           512x50257, 8192x1024
  rnn.lstm               seq 100 batch 64 in 512 hid 512  the same
  attention              b 8, 12 heads, seq 1024, d 64    seq 256 (causal and not)
  norm.layer_norm        8192x768                         8192x768
  norm.batch_norm2d      (64,64,56,56)                    (16,64,56,56)
  activation.gelu        8192x3072                        2048x3072
  embedding              vocab 50257 dim 768, 8x1024      vocab 8192 dim 256, 8x512
  optim.adam             25.2M params in 48 tensors       the same

Scaling sweeps (time against one size, the rest fixed): softmax row length,
conv2d batch size, attention sequence length, LSTM sequence length.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import roofline as rl
from .harness import Case, Runner, Spec

F32 = rl.F32


# ---------------------------------------------------------------- shared plumbing
def gpunet_has(*names: str):
    """A Case.needs check: the reason gpunet lacks one of `names` ('nn.LSTM'), or None."""
    def check():
        for name in names:
            module, _, attr = name.rpartition(".")
            try:
                obj = importlib.import_module(f"gpunet.{module}")
            except ImportError:
                return f"gpunet.{module} does not exist yet"
            if getattr(obj, attr, None) is None:
                return f"gpunet.{name} does not exist yet"
        return None
    return check


def load_torch_state(tm, state: dict):
    """Load gpunet's state_dict (NumPy, PyTorch keys) into a torch module;
    buffers torch has and gpunet does not (num_batches_tracked) may be missing."""
    import torch
    missing, unexpected = tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                                             strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"state_dict mismatch with torch: missing {missing}, unexpected {unexpected}")


def module_state(make) -> dict:
    """A gpunet module's initial weights and buffers, by PyTorch key."""
    return dict(make().state_dict())


def as_outputs(y) -> dict:
    """A forward's result as named outputs: a dict as is (its "out" is what the
    output gradient flows into), anything else as "out"."""
    return y if isinstance(y, dict) else {"out": y}


def gpunet_module(make, fwd, bwd, backward: bool, half_validated=None):
    """Builder: y = fwd(m, inputs) (an array or a dict, see as_outputs); with
    backward, grads = bwd(m, dy) (a dict of input gradients) and every
    parameter's grad is an output too. half_validated: the outputs checked on
    a bfloat16/float16 target when not all of them can be (None: all)."""
    def build(target, state, copies):
        import gpunet
        m = make().to(target.be, target.dtype)
        if state:
            m.load_state_dict(state)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            if backward:
                m.zero_grad()
                last.update(as_outputs(fwd(m, c)))
                last.update(bwd(m, c["dy"]))
            else:
                with gpunet.no_grad():
                    last.update(as_outputs(fwd(m, c)))

        def outputs():
            out = dict(last)
            if backward:
                out.update({f"grad.{k}": p.grad for k, p in m.named_parameters()})
            return out
        return Runner(step, outputs, validated=half_validated if gpunet.dtypes.is_half(target.dtype) else None)
    return build


def torch_module(make, fwd, grads: tuple, backward: bool):
    """Builder for the torch side: make(torch) -> nn.Module or None (stateless),
    fwd(tm, inputs) -> output; `grads` names the inputs that get gradients."""
    def build(target, state, copies):
        torch = target.torch
        tm = make(torch)
        if tm is not None:
            load_torch_state(tm, state)
            tm.to(target.device, target.tdtype)
        if backward:
            for c in copies:
                for g in grads:
                    c[g].requires_grad_(True)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            if backward:
                for g in grads:
                    c[g].grad = None
                if tm is not None:
                    tm.zero_grad(set_to_none=True)
                ys = as_outputs(fwd(tm, c))
                ys["out"].backward(c["dy"])
                last.update(ys, c=c)
            else:
                with torch.no_grad():
                    last.update(as_outputs(fwd(tm, c)))

        def outputs():
            out = {k: v for k, v in last.items() if k != "c"}
            if backward:
                out.update({f"grad_{g}": last["c"][g].grad for g in grads})
                if tm is not None:
                    out.update({f"grad.{k}": p.grad for k, p in tm.named_parameters()})
            return out
        return Runner(step, outputs)
    return build


def normal_inputs(**shapes):
    """setup(rng) input maker: standard normal float32 arrays of the given shapes
    (float32 values, so the float64 reference sees exactly the timed inputs)."""
    return lambda rng: {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def fmt(shape) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


# ---------------------------------------------------------------- linear
def linear_cases(size):
    m, k, n = {"quick": (32, 24, 16), "cpu": (2048, 1024, 1024), "gpu": (8192, 4096, 4096)}[size]
    import gpunet.nn as gnn

    def make():
        return gnn.Linear(k, n)
    return [Case(
        "linear.fwdbwd", f"{m}x{k} -> {n}", 3 * rl.linear_flops(m, k, n) + m * n,
        F32 * (3 * m * k + 3 * n * k + 2 * m * n + 2 * n),
        lambda rng: Spec(module_state(make), normal_inputs(x=(m, k), dy=(m, n))(rng)),
        {"gpunet": gpunet_module(make, lambda mod, c: mod(c["x"]), lambda mod, dy: {"grad_x": mod.backward(dy)},
                                 True),
         "torch": torch_module(lambda t: t.nn.Linear(k, n), lambda tm, c: tm(c["x"]), ("x",), True)},
        note="the GEMM-backed layer: y = x W^T + b, then dx, dW, db")]


# ---------------------------------------------------------------- conv2d
def conv_case(n, ci, h, w, co, backward, sweep=None):
    import gpunet.nn as gnn
    ho, wo = rl.conv_out(h, 3, 1, 1), rl.conv_out(w, 3, 1, 1)
    fl = rl.conv_flops(n, ci, co, ho, wo, 3, 3)
    x, y, wt = n * ci * h * w, n * co * ho * wo, co * ci * 9
    if backward:
        flops, nbytes = 3 * fl + 2 * y, F32 * (3 * x + 2 * y + 3 * wt + 2 * co)
    else:
        flops, nbytes = fl + y, F32 * (x + y + wt + co)

    def make():
        return gnn.Conv2d(ci, co, 3, padding=1)
    shapes = dict(x=(n, ci, h, w), dy=(n, co, ho, wo)) if backward else dict(x=(n, ci, h, w))
    return Case(
        f"conv.conv2d.{'fwdbwd' if backward else 'fwd'}", f"{fmt((n, ci, h, w))}->{co} k3 p1", flops, nbytes,
        lambda rng: Spec(module_state(make), normal_inputs(**shapes)(rng)),
        {"gpunet": gpunet_module(make, lambda m, c: m(c["x"]), lambda m, dy: {"grad_x": m.backward(dy)}, backward),
         "torch": torch_module(lambda t: t.nn.Conv2d(ci, co, 3, padding=1), lambda tm, c: tm(c["x"]), ("x",),
                               backward)},
        sweep=sweep, needs=gpunet_has("nn.Conv2d"))


def conv_cases(size):
    shapes = {"quick": [(2, 3, 6, 5, 4)], "cpu": [(64, 3, 32, 32, 32), (32, 64, 16, 16, 64)],
              "gpu": [(64, 64, 56, 56, 64), (64, 256, 14, 14, 256)]}[size]
    cases = []
    for s in shapes:
        cases.append(conv_case(*s, backward=False))
        cases.append(conv_case(*s, backward=True))
    # batch-size sweep on the first shape (its own point is the main fwdbwd case)
    base = shapes[0]
    for n in {"quick": [1, 4], "cpu": [16, 32, 128], "gpu": [8, 16, 32, 128]}[size]:
        cases.append(conv_case(n, *base[1:], backward=True, sweep=("conv2d batch size", n)))
    cases[1].sweep = ("conv2d batch size", base[0])
    return cases


# ---------------------------------------------------------------- pooling
def pool_case(kind, shape):
    import gpunet.nn as gnn
    n, c, h, w = shape
    ho, wo = rl.conv_out(h, 3, 2, 1), rl.conv_out(w, 3, 2, 1)
    x, y = n * c * h * w, n * c * ho * wo
    if kind == "max":
        # forward writes the argmax (one int32 per output) that backward reads
        flops, nbytes = 10.0 * y, F32 * (2 * x + 4 * y)
    else:
        flops, nbytes = 19.0 * y, F32 * (2 * x + 2 * y)
    cls = {"max": "MaxPool2d", "avg": "AvgPool2d"}[kind]

    def make():
        return getattr(gnn, cls)(3, 2, 1)
    return Case(
        f"pool.{kind}pool2d.fwdbwd", f"{fmt(shape)} 3x3/2 p1", flops, nbytes,
        lambda rng: Spec({}, normal_inputs(x=shape, dy=(n, c, ho, wo))(rng)),
        # max pooling in half: inputs rounded to 8 or 11 bits tie within a window where the float64
        # reference does not, and the gradient goes to the other argmax: its rows check the output
        {"gpunet": gpunet_module(make, lambda m, c_: m(c_["x"]), lambda m, dy: {"grad_x": m.backward(dy)}, True,
                                 half_validated=("out",) if kind == "max" else None),
         "torch": torch_module(lambda t: getattr(t.nn, cls)(3, 2, 1), lambda tm, c_: tm(c_["x"]), ("x",), True)},
        needs=gpunet_has(f"nn.{cls}"))


def pool_cases(size):
    shape = {"quick": (2, 3, 9, 8), "cpu": (16, 64, 56, 56), "gpu": (64, 64, 112, 112)}[size]
    return [pool_case("max", shape), pool_case("avg", shape)]


# ---------------------------------------------------------------- softmax, cross-entropy
def softmax_case(rows, cols, sweep=None):
    import gpunet.nn as gnn
    return Case(
        "softmax.fwd", f"{rows}x{cols}", 5.0 * rows * cols, F32 * 2 * rows * cols,
        lambda rng: Spec({}, normal_inputs(x=(rows, cols))(rng)),
        {"gpunet": gpunet_module(lambda: gnn.Softmax(dim=-1), lambda m, c: m(c["x"]), None, False),
         "torch": torch_module(lambda t: None, lambda tm, c: c["x"].softmax(-1), (), False)},
        sweep=sweep, needs=gpunet_has("nn.Softmax"))


def cross_entropy_case(rows, cols):
    import gpunet.nn as gnn

    def setup(rng):
        return Spec({}, {"x": rng.standard_normal((rows, cols), dtype=np.float32), "t": rng.integers(0, cols, rows)})

    def fwd(m, c):
        return m(c["x"], c["t"])

    def build_gpunet(target, state, copies):
        crit = gnn.CrossEntropyLoss().to(target.be, target.dtype)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            last["loss"] = fwd(crit, c)
            last["grad_x"] = crit.backward()
        return Runner(step, lambda: dict(last))

    def build_torch(target, state, copies):
        F = target.torch.nn.functional
        for c in copies:
            c["x"].requires_grad_(True)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            c["x"].grad = None
            loss = F.cross_entropy(c["x"], c["t"])
            loss.backward()
            last.update(loss=loss, c=c)
        return Runner(step, lambda: {"loss": last["loss"], "grad_x": last["c"]["x"].grad})
    # fewest bytes: a fused kernel reads the logits once and writes dlogits once
    return Case("loss.cross_entropy.fwdbwd", f"{rows}x{cols}", 8.0 * rows * cols, F32 * 2 * rows * cols + 8 * rows,
                setup, {"gpunet": build_gpunet, "torch": build_torch}, needs=gpunet_has("nn.CrossEntropyLoss"),
                note="mean softmax cross-entropy on class indices: loss and dlogits")


def softmax_cases(size):
    shapes = {"quick": [(4, 33), (5, 8)], "cpu": [(512, 50257), (8192, 1024)],
              "gpu": [(8192, 50257), (65536, 1024)]}[size]
    cases = [softmax_case(*shapes[0], sweep=("softmax row length", shapes[0][1])), softmax_case(*shapes[1])]
    cases += [cross_entropy_case(*s) for s in shapes]
    rows = shapes[0][0]
    for cols in {"quick": [7], "cpu": [128, 1024, 8192], "gpu": [128, 1024, 4096, 16384]}[size]:
        cases.append(softmax_case(rows, cols, sweep=("softmax row length", cols)))
    return cases


# ---------------------------------------------------------------- LSTM and GRU
def lstm_case(t, n, i, h, sweep=None, cls="LSTM"):
    """One layer of nn.LSTM (4 gates, states h and c) or nn.GRU (3 gates, h)."""
    import gpunet.nn as gnn

    G = 4 if cls == "LSTM" else 3
    def make():
        return getattr(gnn, cls)(i, h)
    def run(m, c):
        out, state = m(c["x"])
        return {"out": out, **({"h_n": state[0], "c_n": state[1]} if cls == "LSTM" else {"h_n": state})}
    weights = G * h * (i + h)
    # x and dx; out and dout; the saved per-step states and gates; weights, their grads and a GEMM read
    nbytes = F32 * (2 * t * n * i + 2 * t * n * h + 2 * (G + 1) * t * n * h + 3 * weights + 2 * 2 * G * h)
    return Case(
        f"rnn.{cls.lower()}.fwdbwd", f"seq {t} batch {n} in {i} hidden {h}", rl.lstm_flops(t, n, i, h, True, G),
        nbytes, lambda rng: Spec(module_state(make), normal_inputs(x=(t, n, i), dy=(t, n, h))(rng)),
        {"gpunet": gpunet_module(make, run, lambda m, dy: {"grad_x": m.backward(dy)}, True),
         "torch": torch_module(lambda tt: getattr(tt.nn, cls)(i, h), run, ("x",), True)},
        rtol=3e-4, sweep=sweep, needs=gpunet_has(f"nn.{cls}"),
        note="one layer, time-major, zero initial state; checks output, the final states and all gradients "
             "(the output gradient only flows back)")


def lstm_cases(size):
    t, n, i, h = {"quick": (3, 2, 5, 4), "cpu": (100, 64, 512, 512), "gpu": (100, 64, 512, 512)}[size]
    cases = [lstm_case(t, n, i, h, sweep=("LSTM sequence length", t)), lstm_case(t, n, i, h, cls="GRU")]
    for tt in {"quick": [2], "cpu": [10, 25, 50], "gpu": [25, 50, 200]}[size]:
        cases.append(lstm_case(tt, n, i, h, sweep=("LSTM sequence length", tt)))
    return cases


# ---------------------------------------------------------------- attention
def attention_case(b, heads, seq, d, causal, sweep=None):
    import gpunet.nn as gnn
    shape = (b, heads, seq, d)
    nbytes = F32 * b * heads * (seq * d * 12 + 2 * seq)

    def fwd(m, c):
        return m(c["q"], c["k"], c["v"], is_causal=causal)

    def bwd(m, dy):
        dq, dk, dv = m.backward(dy)
        return {"grad_q": dq, "grad_k": dk, "grad_v": dv}

    def tfwd(tm, c):
        import torch
        return torch.nn.functional.scaled_dot_product_attention(c["q"], c["k"], c["v"], is_causal=causal)
    return Case(
        f"attention{'.causal' if causal else ''}.fwdbwd", f"batch {b} heads {heads} seq {seq} d {d}",
        rl.attention_flops(b, heads, seq, seq, d, causal, True), nbytes,
        lambda rng: Spec({}, normal_inputs(q=shape, k=shape, v=shape, dy=shape)(rng)),
        {"gpunet": gpunet_module(gnn.ScaledDotProductAttention, fwd, bwd, True),
         "torch": torch_module(lambda t: None, tfwd, ("q", "k", "v"), True)},
        sweep=sweep, needs=gpunet_has("nn.ScaledDotProductAttention"),
        note="scaled_dot_product_attention, scale 1/sqrt(d)")


def attention_cases(size):
    b, heads, seq, d = {"quick": (1, 2, 5, 3), "cpu": (8, 12, 256, 64), "gpu": (8, 12, 1024, 64)}[size]
    cases = [attention_case(b, heads, seq, d, False, sweep=("attention sequence length", seq)),
             attention_case(b, heads, seq, d, True)]
    for s in {"quick": [8], "cpu": [64, 128, 512], "gpu": [256, 512, 2048]}[size]:
        cases.append(attention_case(b, heads, s, d, False, sweep=("attention sequence length", s)))
    return cases


# ---------------------------------------------------------------- LayerNorm
def layer_norm_cases(size):
    import gpunet.nn as gnn
    rows, cols = {"quick": (5, 7), "cpu": (8192, 768), "gpu": (8192, 768)}[size]

    def make():
        return gnn.LayerNorm(cols)

    def setup(rng):
        # random affine weights, so an implementation that ignores them fails
        state = {"weight": 1 + 0.1 * rng.standard_normal(cols, dtype=np.float32),
                 "bias": 0.1 * rng.standard_normal(cols, dtype=np.float32)}
        return Spec(state, normal_inputs(x=(rows, cols), dy=(rows, cols))(rng))
    mn = rows * cols
    return [Case(
        "norm.layer_norm.fwdbwd", f"{rows}x{cols}", 20.0 * mn, F32 * (5 * mn + 4 * rows + 5 * cols), setup,
        {"gpunet": gpunet_module(make, lambda m, c: m(c["x"]), lambda m, dy: {"grad_x": m.backward(dy)}, True),
         "torch": torch_module(lambda t: t.nn.LayerNorm(cols), lambda tm, c: tm(c["x"]), ("x",), True)},
        needs=gpunet_has("nn.LayerNorm"))]


# ---------------------------------------------------------------- Adam
def torch_adam(torch, params, lr):
    """torch.optim.Adam, fused when this torch supports it on the device (the
    fairest match for gpunet's fused update), else its default."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr), "default"


def adam_cases(size):
    import gpunet
    from gpunet.nn import Parameter
    big, count = {"quick": (4, 2), "cpu": (1024, 24), "gpu": (1024, 24)}[size]
    shapes = [(big, big)] * count + [(big,)] * count
    nparams = sum(int(np.prod(s)) for s in shapes)
    lr = 1e-3

    def setup(rng):
        state = {}
        for j, s in enumerate(shapes):
            state[f"p{j}"] = 0.02 * rng.standard_normal(s, dtype=np.float32)
            # kept 1e-3 away from 0: Adam's first step is -lr·g/(|g| + eps), and a
            # float16 gradient below 6e-8 would be rounded to its subnormal grid
            g = rng.standard_normal(s, dtype=np.float32)
            state[f"g{j}"] = g + np.copysign(np.float32(1e-3), g)
        return Spec(state, {})

    def build_gpunet(target, state, copies):
        params = []
        for j in range(len(shapes)):
            p = Parameter(target.array(state[f"p{j}"]))
            p.grad = target.array(state[f"g{j}"])
            params.append(p)
        # half parameters are validated on their float32 masters: the rounded
        # half weights move in steps of their ulp (up to half the step here)
        half = gpunet.dtypes.is_half(target.dtype)
        start = [p.data.astype(np.float32) if half else p.data.copy() for p in params]
        opt = gpunet.optim.Adam(params, lr=lr, device=target.be)

        def deltas():
            now = [opt.master_weights[p] if half else p.data for p in params]
            return {f"delta{j}": w - s for j, (w, s) in enumerate(zip(now, start))}
        return Runner(lambda i: opt.step(), deltas)

    def build_torch(target, state, copies):
        torch = target.torch
        params = []
        for j in range(len(shapes)):
            p = target.array(state[f"p{j}"]).requires_grad_(True)
            p.grad = target.array(state[f"g{j}"])
            params.append(p)
        start = [p.detach().clone() for p in params]
        opt, variant = torch_adam(torch, params, lr)
        return Runner(lambda i: opt.step(),
                      lambda: {f"delta{j}": p.detach() - s for j, (p, s) in enumerate(zip(params, start))},
                      {"adam": variant})
    return [Case("optim.adam.step", f"{nparams / 1e6:.1f}M params in {len(shapes)} tensors",
                 rl.ADAM_FLOPS_PER_PARAM * nparams, rl.adam_bytes(nparams), setup,
                 {"gpunet": build_gpunet, "torch": build_torch}, rotate=False, needs=gpunet_has("optim.Adam"),
                 note="one Adam update (lr 1e-3); validated on the first step's change of every parameter "
                      "(of the float32 masters of half parameters); torch uses fused=True where it supports it")]


# ---------------------------------------------------------------- GELU, embedding, BatchNorm2d
def gelu_cases(size):
    import gpunet.nn as gnn
    rows, cols = {"quick": (3, 10), "cpu": (2048, 3072), "gpu": (8192, 3072)}[size]
    mn = rows * cols
    return [Case(
        "activation.gelu.fwdbwd", f"{rows}x{cols}", 45.0 * mn, F32 * 5 * mn,
        lambda rng: Spec({}, normal_inputs(x=(rows, cols), dy=(rows, cols))(rng)),
        {"gpunet": gpunet_module(gnn.GELU, lambda m, c: m(c["x"]), lambda m, dy: {"grad_x": m.backward(dy)}, True),
         "torch": torch_module(lambda t: t.nn.GELU(), lambda tm, c: tm(c["x"]), ("x",), True)},
        needs=gpunet_has("nn.GELU"), note="exact (erf) GELU; bytes: x, y; then x, dy, dx")]


def embedding_cases(size):
    import gpunet.nn as gnn
    vocab, dim, n, t = {"quick": (11, 4, 2, 5), "cpu": (8192, 256, 8, 512), "gpu": (50257, 768, 8, 1024)}[size]

    def make():
        return gnn.Embedding(vocab, dim)

    def setup(rng):
        return Spec(module_state(make), {"idx": rng.integers(0, vocab, (n, t)),
                                         "dy": rng.standard_normal((n, t, dim), dtype=np.float32)})

    def bwd(m, dy):
        m.backward(dy)
        return {}
    tokens = n * t
    # the dense weight gradient is written whole, zeros included
    return [Case(
        "embedding.fwdbwd", f"vocab {vocab} dim {dim}, {n}x{t} tokens", float(tokens * dim),
        F32 * (3 * tokens * dim + vocab * dim) + 8 * tokens, setup,
        {"gpunet": gpunet_module(make, lambda m, c: m(c["idx"]), bwd, True),
         "torch": torch_module(lambda t_: t_.nn.Embedding(vocab, dim), lambda tm, c: tm(c["idx"]), (), True)},
        needs=gpunet_has("nn.Embedding"), note="gather rows; backward scatters-adds into a dense weight gradient")]


def batch_norm_cases(size):
    import gpunet.nn as gnn
    shape = {"quick": (3, 4, 5, 6), "cpu": (16, 64, 56, 56), "gpu": (64, 64, 56, 56)}[size]
    c = shape[1]

    def make():
        return gnn.BatchNorm2d(c)

    def setup(rng):
        state = module_state(make)
        state.update(weight=1 + 0.1 * rng.standard_normal(c, dtype=np.float32),
                     bias=0.1 * rng.standard_normal(c, dtype=np.float32))
        return Spec(state, normal_inputs(x=shape, dy=shape)(rng))
    numel = int(np.prod(shape))
    return [Case(
        "norm.batch_norm2d.fwdbwd", fmt(shape), 15.0 * numel, F32 * 5 * numel, setup,
        {"gpunet": gpunet_module(make, lambda m, c_: m(c_["x"]), lambda m, dy: {"grad_x": m.backward(dy)}, True),
         "torch": torch_module(lambda t: t.nn.BatchNorm2d(c), lambda tm, c_: tm(c_["x"]), ("x",), True)},
        needs=gpunet_has("nn.BatchNorm2d"), note="training mode (batch statistics); bytes: x, y; then x, dy, dx")]


FAMILIES = (linear_cases, conv_cases, pool_cases, softmax_cases, lstm_cases, attention_cases, layer_norm_cases,
            batch_norm_cases, gelu_cases, embedding_cases, adam_cases)


def op_cases(size: str) -> list[Case]:
    return [c for family in FAMILIES for c in family(size)]
