"""gpunet's benchmark suite: `python -m gpunet.bench` (or `python bench/run.py`).

Every op family (GEMM-backed Linear, Conv2d, pooling, softmax and softmax
cross-entropy, LSTM, attention, LayerNorm, Adam) and four whole training
steps, on every available backend and PyTorch in the same run: validated
against a float64 reference before timing, timed with CUDA events on the GPU,
reported against a measured roofline and as a ratio to PyTorch.

Modules: harness (validate-then-time), roofline (FLOP/byte models and
measured ceilings), gemm_ceiling (a cpu case's matrix products through
gpunet's paths and PyTorch's: the floor they set), ops and models (the cases),
environment (versions, threads, math mode), report (table, JSON, Markdown,
plots), cli.
"""
from .cli import main

__all__ = ["main"]
