"""Model-level cases: one whole training step (zero_grad, forward, softmax
cross-entropy, backward, Adam update) of the four networks in gpunet.models,
against a PyTorch mirror with the same parameter names and the same weights.

  digits_cnn     (conv 3x3 -> ReLU -> max-pool 2) x 2 -> Linear, 1x8x8 digits
  resnet_small   CIFAR-shaped (3x32x32): conv stem, 3 stages of residual basic
                 blocks with BatchNorm (batch statistics), average pool, Linear
  char_lstm      Embedding -> LSTM (batch_first) -> Linear, per-position loss
  transformer    Embedding + learned positions -> one pre-LayerNorm block
                 (multi-head self-attention, 4x MLP with the tanh form of GELU, as
                 gpunet.models) -> LayerNorm -> Linear

Validation compares the loss and every parameter gradient of the first step
(gradients survive the optimizer step). FLOPs count the convolutions, GEMMs
and attention (forward x 3 for the step). Bytes are a lower bound: each
parameter read by forward and backward, its gradient written, the Adam
update's 7 accesses, plus the batch.
"""
from __future__ import annotations

import numpy as np

from . import roofline as rl
from .harness import Case, Runner, Spec
from .ops import gpunet_has, load_torch_state, torch_adam

LR = 1e-3


# ---------------------------------------------------------------- PyTorch mirrors of gpunet.models
def torch_digits_cnn(torch, width: int, image_size: int = 8):
    nn, side = torch.nn, image_size // 4
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * width * side * side, 10))


def torch_resnet_small(torch, width: int, image_size: int):
    nn = torch.nn

    class Residual(nn.Module):  # gpunet.nn.Residual: y = x + fn(x)
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return x + self.fn(x)

    def cbr(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    layers = cbr(3, width)
    for stage in range(3):
        c = width * 2 ** stage
        if stage:
            layers += cbr(c // 2, c, stride=2)
        body = nn.Sequential(*cbr(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        layers += [Residual(body), nn.ReLU()]
    layers += [nn.AvgPool2d(image_size // 4), nn.Flatten(), nn.Linear(4 * width, 10)]
    return nn.Sequential(*layers)


def torch_char_lstm(torch, vocab, embed, hidden):
    nn = torch.nn

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, embed)
            self.lstm = nn.LSTM(embed, hidden, batch_first=True)
            self.head = nn.Linear(hidden, vocab)

        def forward(self, tokens):  # (N, T) -> (N, V, T), as gpunet.models
            return self.head(self.lstm(self.embed(tokens))[0]).transpose(1, 2)
    return CharLSTM()


def torch_transformer(torch, vocab, max_len, dim, heads):
    nn = torch.nn

    class Positions(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(max_len, dim))

        def forward(self, x):
            return x + self.weight[:x.shape[1]]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

        def forward(self, x):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = Positions()
            self.blocks = nn.Sequential(Block())
            self.ln_f = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab)

        def forward(self, tokens):
            return self.head(self.ln_f(self.blocks(self.pos(self.embed(tokens))))).transpose(1, 2)
    return Transformer()


# ---------------------------------------------------------------- training-step cases
def step_case(name, shape, flops, batch_bytes, make_gpunet, make_torch, make_batch, needs=(), rtol=1e-3,
              note=""):
    """One training step. make_gpunet() -> a gpunet.models network (float32,
    cpu); make_torch(torch) -> its mirror; make_batch(rng) -> {"x", "t"}.
    bfloat16/float16 targets run mixed precision (gpunet.amp.autocast) and
    are validated on the loss."""
    def setup(rng):
        state = dict(make_gpunet().state_dict())
        return Spec(state, make_batch(rng))

    def build_gpunet(target, state, copies):
        import gpunet
        # a half target trains as users do: float32 weights, the forward under autocast
        mixed = gpunet.dtypes.is_half(target.dtype)
        model = make_gpunet().to(target.be, None if mixed else target.dtype)
        model.load_state_dict(state)
        crit = gpunet.nn.CrossEntropyLoss().to(target.be, None if mixed else target.dtype)
        opt = gpunet.optim.Adam(model.parameters(), lr=LR, device=target.be)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            model.zero_grad()
            with gpunet.amp.autocast(dtype=target.dtype if mixed else None, enabled=mixed):
                last["loss"] = crit(model(c["x"]), c["t"])
            model.backward(crit.backward(), input_grad=False)  # as PyTorch: no gradient for the data
            opt.step()

        def outputs():
            return {"loss": last["loss"], **{f"grad.{k}": p.grad for k, p in model.named_parameters()}}
        # mixed precision is checked on the loss: one step's half rounding moves small gradients
        # (BatchNorm over a few values in the quick shapes) by more than any per-op tolerance
        return Runner(step, outputs, validated=("loss",) if mixed else None)

    def build_torch(target, state, copies):
        torch = target.torch
        model = make_torch(torch)
        load_torch_state(model, state)
        model.to(target.device, target.tdtype)
        opt, variant = torch_adam(torch, list(model.parameters()), LR)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(c["x"]), c["t"])
            loss.backward()
            opt.step()
            last["loss"] = loss

        def outputs():
            return {"loss": last["loss"], **{f"grad.{k}": p.grad for k, p in model.named_parameters()}}
        return Runner(step, outputs, {"adam": variant})
    nbytes = rl.F32 * 10 * param_count(make_gpunet) + batch_bytes
    return Case(f"train.{name}", shape, flops, nbytes, setup, {"gpunet": build_gpunet, "torch": build_torch},
                rtol=rtol, needs=gpunet_has("nn.CrossEntropyLoss", "optim.Adam", *needs), note=note)


def param_count(make) -> int:
    try:
        return sum(p.numel() for p in make().parameters())
    except ImportError:  # gpunet.models lacks this network: the case reports it as skipped
        return 0


def digits_case(size):
    n, width = {"quick": (4, 4), "cpu": (256, 32), "gpu": (4096, 32)}[size]
    fwd = n * (rl.conv_flops(1, 1, width, 8, 8, 3, 3) + rl.conv_flops(1, width, 2 * width, 4, 4, 3, 3)
               + rl.linear_flops(1, 2 * width * 4, 10))

    def make():
        from gpunet.models import digits_cnn
        return digits_cnn(width=width)
    return step_case("digits_cnn", f"batch {n} of 1x8x8 width {width}", 3 * fwd, n * (64 * 4 + 8), make,
                     lambda torch: torch_digits_cnn(torch, width),
                     lambda rng: {"x": rng.random((n, 1, 8, 8), dtype=np.float32),
                                  "t": rng.integers(0, 10, n)},
                     needs=("models.digits_cnn",), note="random digits-shaped batch")


def resnet_flops(n, w, side):
    """Forward FLOPs of gpunet.models.resnet_small (one block per stage)."""
    f = rl.conv_flops(n, 3, w, side, side, 3, 3)
    for stage in range(3):
        c, s = w * 2 ** stage, side >> stage
        if stage:
            f += rl.conv_flops(n, c // 2, c, s, s, 3, 3)
        f += 2 * rl.conv_flops(n, c, c, s, s, 3, 3)
    return f + rl.linear_flops(n, 4 * w, 10)


def resnet_case(size):
    n, width, side = {"quick": (2, 4, 8), "cpu": (64, 16, 32), "gpu": (256, 64, 32)}[size]

    def make():
        from gpunet.models import resnet_small
        return resnet_small(image_size=side, width=width)
    return step_case("resnet_small", f"batch {n} of 3x{side}x{side} width {width}", 3 * resnet_flops(n, width, side),
                     n * (3 * side * side * 4 + 8), make, lambda torch: torch_resnet_small(torch, width, side),
                     lambda rng: {"x": rng.standard_normal((n, 3, side, side), dtype=np.float32),
                                  "t": rng.integers(0, 10, n)},
                     needs=("models.resnet_small",), rtol=2e-2,
                     note="BatchNorm in training mode (batch statistics); rtol 2e-2: a pre-activation within "
                          "float32 rounding of 0 takes the other ReLU branch than in the float64 reference "
                          "(PyTorch's own float32 step is 1e-2 off at seed 0)")


def char_lstm_case(size):
    n, t, e, h, v = {"quick": (2, 4, 3, 5, 7), "cpu": (32, 50, 64, 256, 96), "gpu": (64, 100, 128, 512, 96)}[size]
    flops = rl.lstm_flops(t, n, e, h, True) + 3 * rl.linear_flops(t * n, h, v)

    def make():
        from gpunet.models import CharLSTM
        return CharLSTM(v, e, h)
    return step_case("char_lstm", f"batch {n} seq {t} embed {e} hidden {h} vocab {v}", flops, t * n * 16, make,
                     lambda torch: torch_char_lstm(torch, v, e, h),
                     lambda rng: {"x": rng.integers(0, v, (n, t)), "t": rng.integers(0, v, (n, t))},
                     needs=("models.CharLSTM",), note="next-character loss at every position")


def transformer_case(size):
    n, t, d, heads, v = {"quick": (2, 6, 8, 2, 11), "cpu": (4, 128, 256, 4, 512),
                         "gpu": (8, 1024, 768, 12, 4096)}[size]
    fwd = n * t * (2 * 3 * d * d + 2 * d * d + 2 * 8 * d * d + 2 * d * v) \
        + rl.attention_flops(n, heads, t, t, d // heads, False, False)

    def make():
        from gpunet.models import Transformer
        return Transformer(v, t, d, heads, num_layers=1)
    return step_case("transformer", f"batch {n} seq {t} dim {d} heads {heads} vocab {v}", 3 * fwd, n * t * 16, make,
                     lambda torch: torch_transformer(torch, v, t, d, heads),
                     lambda rng: {"x": rng.integers(0, v, (n, t)), "t": rng.integers(0, v, (n, t))},
                     needs=("models.Transformer",), note="one block, bidirectional attention, per-token loss")


def model_cases(size: str) -> list[Case]:
    return [digits_case(size), resnet_case(size), char_lstm_case(size), transformer_case(size)]
