"""torchtext.data.utils.get_tokenizer for None (split on whitespace) and
'basic_english' (lower case, punctuation split off, as torchtext's)."""
from __future__ import annotations

import re

__all__ = ["get_tokenizer"]

# torchtext's basic_english rules: each pattern becomes the replacement, then split on whitespace
_BASIC_ENGLISH = [(re.compile(p), r) for p, r in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " "))]


def _basic_english(line: str) -> list[str]:
    line = line.lower()
    for pattern, repl in _BASIC_ENGLISH:
        line = pattern.sub(repl, line)
    return line.split()


def get_tokenizer(tokenizer, language: str = "en"):
    """A function str -> list of tokens: tokenizer=None splits on whitespace,
    'basic_english' normalises as torchtext does; a callable is returned as is."""
    if tokenizer is None:
        return str.split
    if callable(tokenizer):
        return tokenizer
    if tokenizer == "basic_english":
        if language != "en":
            raise ValueError(f"get_tokenizer: basic_english is for language 'en', got {language!r}")
        return _basic_english
    raise NotImplementedError(f"get_tokenizer: {tokenizer!r} is not available in gpunet "
                              "(None, 'basic_english' or a callable)")
