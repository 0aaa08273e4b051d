"""Named example models, used by the examples and by `python -m gpunet train
--model NAME`. Each is built from gpunet.nn layers with explicit backward
passes; `create(name, **kwargs)` builds one by name.

Sequence models (char_lstm, transformer) take integer tokens (N, T) and return
logits (N, V, T): the class axis second, the layout CrossEntropyLoss (and the
"accuracy" metric of gpunet.train) expects for per-position targets (N, T).
The logits are a view of the head's output, not a copy (the loss reads that
memory as rows as it is); np.ascontiguousarray gives a compact array.
"""
from __future__ import annotations

import numpy as np

from . import nn
from .backend import to_numpy
from .nn import init
from .nn.module import Module, Parameter, no_grad


def mlp(in_features: int, num_classes: int, hidden: int = 128, depth: int = 1) -> nn.Sequential:
    """Flatten, then `depth` hidden Linear-ReLU layers, then a Linear classifier."""
    layers = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def digits_cnn(in_channels: int = 1, image_size: int = 8, num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """LeNet-style: (conv 3x3 -> ReLU -> max-pool 2x2) twice, then a Linear
    classifier. 8x8 digits: 8 -> 4 -> 2 pixels; 28x28 MNIST: 28 -> 14 -> 7."""
    side = image_size // 4
    if side < 1:
        raise ValueError(f"image_size: need at least 4 pixels for two 2x2 poolings, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * side * side, num_classes))


def _conv_bn_relu(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _basic_block(channels):
    """ResNet's basic block y = ReLU(x + BN(conv(ReLU(BN(conv(x))))))."""
    body = nn.Sequential(*_conv_bn_relu(channels, channels),
                         nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
    return [nn.Residual(body), nn.ReLU()]


def resnet_small(in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 16,
                 blocks_per_stage: int = 1) -> nn.Sequential:
    """A small ResNet for CIFAR-shaped input: a conv stem, three stages of
    residual basic blocks at widths w, 2w, 4w (a stride-2 conv between stages
    halves the resolution), global average pooling and a Linear classifier."""
    if image_size % 4:
        raise ValueError(f"image_size: expected a multiple of 4 (two stride-2 stages), got {image_size}")
    layers = _conv_bn_relu(in_channels, width)
    for stage in range(3):
        c = width * 2 ** stage
        if stage:
            layers += _conv_bn_relu(c // 2, c, stride=2)
        for _ in range(blocks_per_stage):
            layers += _basic_block(c)
    layers += [nn.AvgPool2d(image_size // 4), nn.Flatten(), nn.Linear(4 * width, num_classes)]
    return nn.Sequential(*layers)


def _class_axis_second(logits):
    """(N, T, V) logits -> (N, V, T), a view: CrossEntropyLoss reads it as
    (N*T, V) rows without a copy."""
    return logits.transpose(0, 2, 1)


def _class_axis_last(xp, dlogits):
    """(N, V, T) gradients -> (N, T, V), contiguous for the head's backward: no
    copy when they are the view CrossEntropyLoss returns on the host."""
    return xp.ascontiguousarray(dlogits.transpose(0, 2, 1))


class CharLSTM(Module):
    """Character language model: Embedding -> LSTM -> Linear.
    forward(tokens (N, T)) -> logits (N, V, T); `sample` generates text.
    Inside, the sequence runs time-major, (T, N, ...): the LSTM's own layout,
    so no batch-first copies on the way in or out; the logits are a view."""

    def __init__(self, vocab_size: int, embed_dim: int = 32, hidden_size: int = 128, num_layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, state=None):
        h, state = self.lstm(self.embed(tokens.T), state)
        self._state = state
        return self.head(h).transpose(1, 2, 0)  # (T, N, V) -> (N, V, T)

    def backward(self, dlogits):
        dh = self.head.backward(self.backend.xp.ascontiguousarray(dlogits.transpose(2, 0, 1)))
        self.embed.backward(self.lstm.backward(dh))
        return None  # integer tokens have no gradient

    def sample(self, prompt, length: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """`length` tokens drawn one at a time after the integer `prompt`, each
        fed back as the next input (the LSTM state carries the context)."""
        rng = np.random.default_rng(seed)
        xp = self.backend.xp
        was_training = self.training
        self.eval()
        out = []
        try:
            with no_grad():
                logits = self.forward(xp.asarray(np.asarray(prompt, dtype=np.int64)[None]))
                state = self._state
                for _ in range(length):
                    z = np.asarray(to_numpy(logits[0, :, -1]), dtype=np.float64) / max(temperature, 1e-6)
                    p = np.exp(z - z.max())
                    token = int(rng.choice(len(p), p=p / p.sum()))
                    out.append(token)
                    logits = self.forward(xp.asarray(np.array([[token]], dtype=np.int64)), state)
                    state = self._state
        finally:
            self.train(was_training)
        return np.array(out, dtype=np.int64)


class LearnedPositions(Module):
    """Adds a learned vector per position: x (N, T, D) + weight[:T]."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.weight = Parameter(init.normal((max_len, dim), std=0.02, dtype=self.dtype))

    def forward(self, x):
        T = x.shape[1]
        if T > self.weight.shape[0]:
            raise ValueError(f"input: sequence length {T} exceeds max_len={self.weight.shape[0]}")
        self.save(T)
        return x + self.weight.data[:T]

    def backward(self, dy):
        T = self.saved()
        g = self.backend.xp.zeros_like(self.weight.data)
        g[:T] = dy.sum(axis=0)
        self.weight.accumulate(g)
        return dy


class TransformerBlock(Module):
    """Pre-norm transformer encoder block:
    x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of 4x width (the tanh
    form of GELU, as GPT-2: cheaper than erf on the host)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln2(x))

    def backward(self, dy):
        dx = dy + self.ln2.backward(self.mlp.backward(dy))
        dq, dk, dv = self.attn.backward(dx)
        return dx + self.ln1.backward(dq + dk + dv)  # self-attention: q, k, v are all LN(x)


class Transformer(Module):
    """Token embedding + learned positions, `num_layers` TransformerBlocks, a
    final LayerNorm and a Linear head: tokens (N, T) -> logits (N, V, T).
    Bidirectional (no causal mask): suited to sequence-to-sequence tasks of
    equal length such as sorting or reversing."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, num_heads: int = 4, num_layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.embed.weight.data *= 0.1  # N(0, 0.01): keeps the residual stream small at the start
        self.pos = LearnedPositions(max_len, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens):
        x = self.blocks(self.pos(self.embed(tokens)))
        return _class_axis_second(self.head(self.ln_f(x)))

    def backward(self, dlogits):
        dx = self.ln_f.backward(self.head.backward(_class_axis_last(self.backend.xp, dlogits)))
        self.embed.backward(self.pos.backward(self.blocks.backward(dx)))
        return None


MODELS = {
    "mlp": mlp,
    "digits_cnn": digits_cnn,
    "resnet_small": resnet_small,
    "char_lstm": CharLSTM,
    "transformer": Transformer,
}


def create(name: str, **kwargs) -> Module:
    """Build a model of MODELS by name with its keyword arguments."""
    if name not in MODELS:
        raise ValueError(f"model: unknown {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
