"""Seeding. One global NumPy generator feeds weight initialisation and data
shuffling; `manual_seed` resets it (and the seed used by dropout's counter-based
RNG), so the same seed gives the same run on every backend."""
import numpy as np

_state = {"seed": 0, "rng": np.random.default_rng(0), "offset": 0}


def manual_seed(seed: int):
    """Seed gpunet's random number generation (initialisation, shuffling, dropout)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    _state.update(seed=int(seed), rng=np.random.default_rng(int(seed)), offset=0)


def generator() -> np.random.Generator:
    """The global generator (host side): use it for anything random in gpunet."""
    return _state["rng"]


def next_philox_offset(n: int) -> tuple[int, int]:
    """(seed, offset) for a counter-based stream of `n` random numbers; advances
    the offset so the next call draws fresh numbers. Dropout uses this so its
    masks are a pure function of (seed, offset, element index) on every backend."""
    off = _state["offset"]
    _state["offset"] = off + int(n)
    return _state["seed"], off


def get_state() -> dict:
    """Everything needed to continue the random streams exactly (for resuming)."""
    return {"seed": _state["seed"], "offset": _state["offset"],
            "generator": _state["rng"].bit_generator.state}


def set_state(state: dict):
    """Restore what `get_state` returned."""
    rng = np.random.default_rng(int(state["seed"]))
    rng.bit_generator.state = state["generator"]
    _state.update(seed=int(state["seed"]), offset=int(state["offset"]), rng=rng)
