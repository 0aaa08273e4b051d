"""Seeding. A NumPy generator feeds weight initialisation and data shuffling;
`manual_seed` resets it (and the seed used by dropout's counter-based RNG), so
the same seed gives the same run on every backend.

Threads: the random state is per thread, so threads never draw from one
another's streams and a thread's results do not depend on how the threads
interleave. `manual_seed(s)` seeds the calling thread; a thread's state starts,
on its first use, fresh from the seed last passed to `manual_seed` by any
thread (0 if none). Two threads that each call `manual_seed` and then train get
exactly what the same two runs give one after the other; two that do not seed
draw the same streams (seed them differently for different dropout masks).
"""
import threading

import numpy as np

_default_seed = 0


class _ThreadState(threading.local):
    def __init__(self):
        self.seed = _default_seed
        self.rng = np.random.default_rng(_default_seed)
        self.offset = 0


_state = _ThreadState()


def manual_seed(seed: int):
    """Seed gpunet's random number generation (initialisation, shuffling, dropout)."""
    global _default_seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    _default_seed = int(seed)
    _state.seed, _state.rng, _state.offset = int(seed), np.random.default_rng(int(seed)), 0


def generator() -> np.random.Generator:
    """This thread's generator (host side): use it for anything random in gpunet."""
    return _state.rng


def next_philox_offset(n: int) -> tuple[int, int]:
    """(seed, offset) for a counter-based stream of `n` random numbers; advances
    the offset so the next call draws fresh numbers. Dropout uses this so its
    masks are a pure function of (seed, offset, element index) on every backend."""
    off = _state.offset
    _state.offset = off + int(n)
    return _state.seed, off


def get_state() -> dict:
    """Everything needed to continue the random streams exactly (for resuming)."""
    return {"seed": _state.seed, "offset": _state.offset, "generator": _state.rng.bit_generator.state}


def set_state(state: dict):
    """Restore what `get_state` returned."""
    rng = np.random.default_rng(int(state["seed"]))
    rng.bit_generator.state = state["generator"]
    _state.seed, _state.offset, _state.rng = int(state["seed"]), int(state["offset"]), rng


class Generator:
    """A random stream of its own, as torch.Generator, for the `generator=`
    arguments (DataLoader shuffling, random_split, samplers):
    `gpunet.Generator().manual_seed(42)`. Host-side (NumPy PCG64) whatever
    the device named."""

    def __init__(self, device="cpu"):
        self.device = device
        self.manual_seed(int(np.random.SeedSequence().entropy % 2 ** 63))

    def manual_seed(self, seed: int) -> "Generator":
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self._seed = int(seed)
        self.rng = np.random.default_rng(self._seed)
        return self

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> "Generator":
        self.rng.bit_generator.state = state
        return self


def rng_of(generator) -> np.random.Generator:
    """The NumPy generator behind a `generator=` argument (None: this thread's)."""
    if generator is None:
        return _state.rng
    if not isinstance(generator, Generator):
        raise TypeError(f"generator: expected a gpunet.Generator or None, got {type(generator).__name__}")
    return generator.rng
