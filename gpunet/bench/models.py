"""Model-level cases: one whole training step (zero_grad, forward, softmax
cross-entropy, backward, Adam update) of four small networks, built twice
with the same parameter names (gpunet and PyTorch) and the same weights.

  digits_cnn       conv-relu-pool x2, MLP head on 8x8 single-channel digits
  resnet_cifar     CIFAR-shaped (3x32x32) CNN with BatchNorm and two residual blocks
  char_lstm        embedding -> LSTM -> linear over characters
  transformer      embedding -> pre-LN causal self-attention block + MLP block -> LN -> linear

Validation compares the loss and every parameter gradient of the first step
(gradients survive the optimizer step). FLOPs count the GEMMs, convolutions
and attention (forward x 3 for the step); bytes are a lower bound: each
parameter read by forward and backward, its gradient written, and the Adam
update's 7 accesses, plus the batch.
"""
from __future__ import annotations

import numpy as np

from . import roofline as rl
from .harness import Case, Runner, Spec
from .ops import gpunet_has, load_torch_state, torch_adam

LR = 1e-3


# ---------------------------------------------------------------- the networks, both frameworks
def digits_cnn(nn):
    """nn: gpunet.nn or torch.nn (same layer names and arguments)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))


def resnet_cifar(nn, residual):
    def block(c):
        return residual(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)))
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         block(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         block(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, 10))


def gpunet_models():
    """The gpunet side: the two sequence models need explicit backward passes."""
    import gpunet.nn as gnn

    class CharLSTM(gnn.Module):
        def __init__(self, vocab, embed, hidden):
            super().__init__()
            self.emb = gnn.Embedding(vocab, embed)
            self.lstm = gnn.LSTM(embed, hidden)
            self.head = gnn.Linear(hidden, vocab)

        def forward(self, idx):  # (T, N) -> logits (T*N, vocab)
            out, _ = self.lstm(self.emb(idx))
            logits = self.head(out)
            self.save(logits.shape)
            return logits.reshape(-1, logits.shape[-1])

        def backward(self, dlogits):
            dh = self.head.backward(dlogits.reshape(self.saved()))
            self.emb.backward(self.lstm.backward(dh))

    class SelfAttention(gnn.Module):
        """Causal multi-head self-attention: x -> attn(x, x, x); dx sums the
        query, key and value gradients."""

        def __init__(self, embed, heads):
            super().__init__()
            self.attn = gnn.MultiheadAttention(embed, heads, batch_first=True)

        def forward(self, x):
            xp, t = self.backend.xp, x.shape[1]
            mask = xp.triu(xp.ones((t, t), dtype=bool), 1)
            return self.attn(x, x, x, need_weights=False, attn_mask=mask, is_causal=True)[0]

        def backward(self, dy):
            dq, dk, dv = self.attn.backward(dy)
            return dq + dk + dv

    class Transformer(gnn.Module):
        def __init__(self, vocab, embed, heads):
            super().__init__()
            self.tok = gnn.Embedding(vocab, embed)
            self.blocks = gnn.Sequential(
                gnn.Residual(gnn.Sequential(gnn.LayerNorm(embed), SelfAttention(embed, heads))),
                gnn.Residual(gnn.Sequential(gnn.LayerNorm(embed), gnn.Linear(embed, 4 * embed), gnn.GELU(),
                                            gnn.Linear(4 * embed, embed))))
            self.ln_f = gnn.LayerNorm(embed)
            self.head = gnn.Linear(embed, vocab)

        def forward(self, idx):  # (N, T) -> logits (N*T, vocab)
            logits = self.head(self.ln_f(self.blocks(self.tok(idx))))
            self.save(logits.shape)
            return logits.reshape(-1, logits.shape[-1])

        def backward(self, dlogits):
            d = self.ln_f.backward(self.head.backward(dlogits.reshape(self.saved())))
            self.tok.backward(self.blocks.backward(d))

    return CharLSTM, Transformer


def torch_models(torch):
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return x + self.fn(x)

    class CharLSTM(nn.Module):
        def __init__(self, vocab, embed, hidden):
            super().__init__()
            self.emb = nn.Embedding(vocab, embed)
            self.lstm = nn.LSTM(embed, hidden)
            self.head = nn.Linear(hidden, vocab)

        def forward(self, idx):
            logits = self.head(self.lstm(self.emb(idx))[0])
            return logits.reshape(-1, logits.shape[-1])

    class SelfAttention(nn.Module):
        def __init__(self, embed, heads):
            super().__init__()
            self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)

        def forward(self, x):
            t = x.shape[1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
            return self.attn(x, x, x, need_weights=False, attn_mask=mask, is_causal=True)[0]

    class Transformer(nn.Module):
        def __init__(self, vocab, embed, heads):
            super().__init__()
            self.tok = nn.Embedding(vocab, embed)
            self.blocks = nn.Sequential(
                Residual(nn.Sequential(nn.LayerNorm(embed), SelfAttention(embed, heads))),
                Residual(nn.Sequential(nn.LayerNorm(embed), nn.Linear(embed, 4 * embed), nn.GELU(),
                                       nn.Linear(4 * embed, embed))))
            self.ln_f = nn.LayerNorm(embed)
            self.head = nn.Linear(embed, vocab)

        def forward(self, idx):
            logits = self.head(self.ln_f(self.blocks(self.tok(idx))))
            return logits.reshape(-1, logits.shape[-1])

    return Residual, CharLSTM, Transformer


# ---------------------------------------------------------------- training-step cases
def step_case(name, shape, flops, nparams, batch_bytes, make_gpunet, make_torch, make_batch, needs=(), rtol=1e-3,
              note=""):
    """One training step. make_gpunet() -> gpunet Module (float32, cpu);
    make_torch(torch) -> the same network in torch; make_batch(rng) -> {"x", "t"}."""
    def setup(rng):
        state = {k: v.astype(np.float64) for k, v in make_gpunet().state_dict().items()}
        return Spec(state, make_batch(rng))

    def build_gpunet(target, state, copies):
        import gpunet
        model = make_gpunet().to(target.be, target.dtype)
        model.load_state_dict(state)
        crit = gpunet.nn.CrossEntropyLoss().to(target.be, target.dtype)
        opt = gpunet.optim.Adam(model.parameters(), lr=LR, device=target.be)
        last = {}

        def step(i):
            c = copies[i % len(copies)]
            model.zero_grad()
            last["loss"] = crit(model(c["x"]), c["t"])
            model.backward(crit.backward())
            opt.step()

        def outputs():
            return {"loss": last["loss"], **{f"grad.{k}": p.grad for k, p in model.named_parameters()}}
        return Runner(step, outputs)

    def build_torch(target, state, copies):
        torch = target.torch
        model = make_torch(torch)
        load_torch_state(model, state)
        model.to(target.device, target.tdtype)
        opt, _ = torch_adam(torch, list(model.parameters()), LR)
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
        return Runner(step, outputs)
    nbytes = rl.F32 * 10 * nparams + batch_bytes
    return Case(f"train.{name}", shape, flops, nbytes, setup, {"gpunet": build_gpunet, "torch": build_torch},
                rtol=rtol, needs=gpunet_has("nn.CrossEntropyLoss", "optim.Adam", *needs), note=note)


def _count(make) -> int:
    return sum(int(np.prod(v.shape)) for v in make().state_dict().values())


def digits_case(size):
    import gpunet.nn as gnn
    n = {"quick": 4, "cpu": 256, "gpu": 4096}[size]
    fwd = n * (rl.conv_flops(1, 1, 16, 8, 8, 3, 3) + rl.conv_flops(1, 16, 32, 4, 4, 3, 3)
               + rl.linear_flops(1, 128, 64) + rl.linear_flops(1, 64, 10))
    make = lambda: digits_cnn(gnn)  # noqa: E731
    return step_case("digits_cnn", f"batch {n} of 1x8x8", 3 * fwd, _count(make), n * (64 * 4 + 8),
                     make, lambda torch: digits_cnn(torch.nn),
                     lambda rng: {"x": rng.random((n, 1, 8, 8)), "t": rng.integers(0, 10, n)},
                     needs=("nn.Conv2d", "nn.MaxPool2d", "nn.Flatten"),
                     note="synthetic digits-shaped batch; 2 conv + 2 linear layers")


def resnet_case(size):
    import gpunet.nn as gnn
    n = {"quick": 2, "cpu": 32, "gpu": 256}[size]
    fwd = n * (rl.conv_flops(1, 3, 32, 32, 32, 3, 3) + 2 * rl.conv_flops(1, 32, 32, 32, 32, 3, 3)
               + rl.conv_flops(1, 32, 64, 16, 16, 3, 3) + 2 * rl.conv_flops(1, 64, 64, 16, 16, 3, 3)
               + rl.linear_flops(1, 64, 10))
    make = lambda: resnet_cifar(gnn, gnn.Residual)  # noqa: E731
    return step_case("resnet_cifar", f"batch {n} of 3x32x32", 3 * fwd, _count(make), n * (3 * 32 * 32 * 4 + 8),
                     make, lambda torch: resnet_cifar(torch.nn, torch_models(torch)[0]),
                     lambda rng: {"x": rng.standard_normal((n, 3, 32, 32)), "t": rng.integers(0, 10, n)},
                     needs=("nn.Conv2d", "nn.BatchNorm2d", "nn.Residual", "nn.MaxPool2d", "nn.AvgPool2d"),
                     note="5 convs with BatchNorm (batch statistics), 2 residual blocks, 10 classes")


def char_lstm_case(size):
    t, n, e, h, v = {"quick": (4, 2, 3, 5, 7), "cpu": (50, 32, 64, 256, 96), "gpu": (100, 64, 128, 512, 96)}[size]
    flops = rl.lstm_flops(t, n, e, h, True) + 3 * rl.linear_flops(t * n, h, v)

    def make():
        return gpunet_models()[0](v, e, h)
    return step_case("char_lstm", f"seq {t} batch {n} embed {e} hidden {h} vocab {v}", flops, _count(make),
                     t * n * 16, make, lambda torch: torch_models(torch)[1](v, e, h),
                     lambda rng: {"x": rng.integers(0, v, (t, n)), "t": rng.integers(0, v, t * n)},
                     needs=("nn.Embedding", "nn.LSTM"),
                     note="next-character loss over every position")


def transformer_case(size):
    n, t, e, heads, v = {"quick": (2, 6, 8, 2, 11), "cpu": (4, 128, 256, 4, 512),
                         "gpu": (8, 1024, 768, 12, 4096)}[size]
    tokens = n * t
    fwd = (tokens * (2 * 3 * e * e + 2 * e * e + 2 * 8 * e * e + 2 * e * v)
           + rl.attention_flops(n, heads, t, t, e // heads, True, False))
    flops = 3 * fwd

    def make():
        return gpunet_models()[1](v, e, heads)
    return step_case("transformer", f"batch {n} seq {t} embed {e} heads {heads} vocab {v}", flops, _count(make),
                     tokens * 16, make, lambda torch: torch_models(torch)[2](v, e, heads),
                     lambda rng: {"x": rng.integers(0, v, (n, t)), "t": rng.integers(0, v, tokens)},
                     needs=("nn.Embedding", "nn.MultiheadAttention", "nn.LayerNorm", "nn.GELU"),
                     note="one pre-LayerNorm block (causal attention + 4x GELU MLP), next-token loss")


def model_cases(size: str) -> list[Case]:
    return [digits_case(size), resnet_case(size), char_lstm_case(size), transformer_case(size)]
