"""Character-level text data for language models (Karpathy's "hello" model
and its larger cousins): every window of `seq_len` characters is an input,
the same window shifted by one character is its target."""
from __future__ import annotations

import numpy as np

from .dataset import Dataset


class CharDataset(Dataset):
    """Windows over a text. Sample i is (codes of text[i:i+seq_len],
    codes of text[i+1:i+seq_len+1]), both int64 of shape (seq_len,).

    vocab: the sorted distinct characters (or a given string/list of them, so
    two datasets can share an encoding).
    """

    def __init__(self, text: str, seq_len: int, vocab=None):
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
            raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
        if len(text) < seq_len + 1:
            raise ValueError(f"text: need at least seq_len + 1 = {seq_len + 1} characters, got {len(text)}")
        self.vocab = sorted(set(text)) if vocab is None else list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        self.seq_len = int(seq_len)
        self.codes = self.encode(text)
        self._window = np.arange(self.seq_len)

    @classmethod
    def from_file(cls, path, seq_len: int, encoding: str = "utf-8", vocab=None) -> "CharDataset":
        with open(path, encoding=encoding) as f:
            return cls(f.read(), seq_len, vocab=vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> np.ndarray:
        unknown = sorted(set(s) - set(self.stoi))
        if unknown:
            raise ValueError(f"encode: characters {''.join(unknown)!r} are not in the vocabulary")
        return np.fromiter((self.stoi[c] for c in s), dtype=np.int64, count=len(s))

    def decode(self, codes) -> str:
        return "".join(self.vocab[int(i)] for i in np.asarray(codes).reshape(-1))

    def __len__(self):
        return len(self.codes) - self.seq_len

    def __getitem__(self, index):
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        i %= len(self)
        return self.codes[i:i + self.seq_len], self.codes[i + 1:i + 1 + self.seq_len]

    def __getitems__(self, indices):
        rows = np.asarray(indices)[:, None] + self._window
        return self.codes[rows], self.codes[rows + 1]
