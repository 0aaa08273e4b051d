"""torchtext.datasets.WikiText2 without downloads, and the synthetic corpus
that stands in for it.

WikiText2 reads wiki.{train,valid,test}.tokens from root/wikitext-2 (or
root/datasets/WikiText2/wikitext-2, torchtext's layout) when present.
Otherwise it says so once and serves a synthetic corpus in WikiText's line
format: sentences drawn from a small grammar over ~250 made-up words with
Zipf-like frequencies and a few <unk>s, so a language model has structure to
learn (the loss falls) but nothing is real English. GPUNET_SYNTHETIC_SAMPLES
"N" or "N,M" sets the number of lines of the synthetic train split (N) and
of the valid and test splits (M), for quick runs.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..data.dataset import IterableDataset
from ..vision.datasets import synthetic_sizes

__all__ = ["WikiText2", "synthetic_corpus"]

_SPLITS = ("train", "valid", "test")
_SIZES = {"train": 36718, "valid": 3760, "test": 4358}  # WikiText-2's line counts
_announced = []


def _words(rng, n, syllables):
    out = set()
    while len(out) < n:
        out.add("".join(rng.choice(syllables, rng.integers(1, 4))))
    return sorted(out)


def _zipf(rng, words):
    p = 1.0 / np.arange(1, len(words) + 1)
    return rng.permutation(words), p / p.sum()


def synthetic_corpus(lines: int, seed: int = 0) -> list[str]:
    """`lines` lines of WikiText-like text (a leading space, space-separated
    tokens, empty lines between paragraphs, ' = Title = ' headings). The
    vocabulary and grammar are fixed; `seed` draws the sentences."""
    vocab_rng = np.random.default_rng(2)
    syl = ["ka", "to", "ri", "mu", "se", "lo", "na", "vi", "de", "po", "ga", "shi", "ne", "bu", "ra"]
    nouns, verbs, adjs = (_zipf(vocab_rng, _words(vocab_rng, n, syl)) for n in (140, 70, 40))
    rng = np.random.default_rng(seed)

    def pick(pool):
        words, p = pool
        return words[rng.choice(len(words), p=p)]

    def sentence():
        subject = ["the", pick(adjs), pick(nouns)] if rng.random() < 0.5 else ["a", pick(nouns)]
        obj = ["the", pick(nouns)] if rng.random() < 0.7 else [pick(adjs), pick(nouns), "and", "the", pick(nouns)]
        words = subject + [pick(verbs)] + obj + ([",", "in", pick(nouns)] if rng.random() < 0.3 else []) + ["."]
        return [w if rng.random() > 0.02 else "<unk>" for w in words]

    out = []
    while len(out) < lines:
        kind = rng.random()
        if kind < 0.1:
            out.append(f" = {pick(nouns).capitalize()} {pick(nouns)} = ")
        elif kind < 0.3:
            out.append(" ")
        else:
            out.append(" " + " ".join(w for _ in range(rng.integers(1, 5)) for w in sentence()) + " ")
    return [line + "\n" for line in out]


class _Lines(IterableDataset):
    def __init__(self, lines):
        self.lines = lines

    def __iter__(self):
        return iter(self.lines)

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        return self.lines[i]


def _local(root):
    for d in (os.path.join(root, "wikitext-2"), os.path.join(root, "datasets", "WikiText2", "wikitext-2")):
        if all(os.path.exists(os.path.join(d, f"wiki.{s}.tokens")) for s in _SPLITS):
            return d
    return None


def WikiText2(root: str = ".data", split=_SPLITS):  # noqa: N802 (torchtext's name)
    """The lines of the split (a str) or a tuple of them (a tuple of splits)."""
    names = (split,) if isinstance(split, str) else tuple(split)
    bad = [s for s in names if s not in _SPLITS]
    if bad:
        raise ValueError(f"WikiText2: split: expected some of {_SPLITS}, got {bad[0]!r}")
    d = _local(os.path.expanduser(str(root)))
    if d is None and not _announced:
        _announced.append(True)
        print(f"gpunet.text: WikiText2: no local copy under {root!r} (wikitext-2/wiki.*.tokens); downloads are not "
              "possible here; using a SYNTHETIC corpus (not WikiText-2)", file=sys.stderr)
    out = []
    for s in names:
        if d is not None:
            with open(os.path.join(d, f"wiki.{s}.tokens"), encoding="utf-8") as f:
                out.append(_Lines(f.readlines()))
        else:
            n_train, n_eval = synthetic_sizes(_SIZES["train"], _SIZES["valid"])
            n = n_train if s == "train" else (n_eval if os.environ.get("GPUNET_SYNTHETIC_SAMPLES") else _SIZES[s])
            out.append(_Lines(synthetic_corpus(n, seed=_SPLITS.index(s))))
    return out[0] if isinstance(split, str) else tuple(out)
