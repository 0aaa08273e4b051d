"""torchtext.vocab.build_vocab_from_iterator and its Vocab."""
from __future__ import annotations

from collections import Counter

__all__ = ["Vocab", "build_vocab_from_iterator"]


class Vocab:
    """Token <-> index. vocab[token] and vocab(tokens) look tokens up; an
    unknown token raises unless set_default_index gave an index for it."""

    def __init__(self, itos):
        self._itos = list(itos)
        self._stoi = {t: i for i, t in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            raise ValueError("Vocab: the tokens must be distinct")
        self._default = None

    def __len__(self):
        return len(self._itos)

    def __contains__(self, token):
        return token in self._stoi

    def __getitem__(self, token: str) -> int:
        i = self._stoi.get(token, self._default)
        if i is None:
            raise RuntimeError(f"Token {token!r} not found and default index is not set (set_default_index)")
        return i

    def __call__(self, tokens) -> list[int]:
        return self.lookup_indices(tokens)

    def lookup_indices(self, tokens) -> list[int]:
        return [self[t] for t in tokens]

    def lookup_token(self, index: int) -> str:
        return self._itos[index]

    def lookup_tokens(self, indices) -> list[str]:
        return [self._itos[i] for i in indices]

    def set_default_index(self, index):
        if index is not None and not 0 <= index < len(self):
            raise IndexError(f"set_default_index: {index} is outside the vocabulary of {len(self)} tokens")
        self._default = index

    def get_default_index(self):
        return self._default

    def get_itos(self) -> list[str]:
        return list(self._itos)

    def get_stoi(self) -> dict[str, int]:
        return dict(self._stoi)

    def append_token(self, token: str):
        if token in self._stoi:
            raise RuntimeError(f"Token {token!r} already exists in the Vocab")
        self._stoi[token] = len(self._itos)
        self._itos.append(token)

    def insert_token(self, token: str, index: int):
        if token in self._stoi:
            raise RuntimeError(f"Token {token!r} already exists in the Vocab")
        self._itos.insert(index, token)
        self._stoi = {t: i for i, t in enumerate(self._itos)}


def build_vocab_from_iterator(iterator, min_freq: int = 1, specials=None, special_first: bool = True,
                              max_tokens=None) -> Vocab:
    """A Vocab of the tokens in `iterator` (an iterable of token lists) seen at
    least min_freq times, most frequent first (ties alphabetical), with
    `specials` first (or last), at most max_tokens in all (torchtext's rules)."""
    counter = Counter()
    for tokens in iterator:
        counter.update(tokens)
    specials = list(specials or [])
    for s in specials:
        counter.pop(s, None)
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    if max_tokens is not None:
        if max_tokens <= len(specials):
            raise ValueError(f"max_tokens: {max_tokens} leaves no room beside the {len(specials)} specials")
        ordered = ordered[:max_tokens - len(specials)]
    words = [t for t, n in ordered if n >= min_freq]
    return Vocab(specials + words if special_first else words + specials)
