"""Scaled dot-product attention forward+backward on the CPU: gpunet's NumPy
backend against PyTorch CPU (torch.nn.functional.scaled_dot_product_attention).

The issue's shape: batch 8, 12 heads, sequence 256, head dim 64, float32.
PyTorch runs with as many threads as NumPy's BLAS uses; the output and the
three input gradients are checked against PyTorch before timing. gpunet's
CPU path is the reference algorithm (it materialises the L×S probabilities:
two batched GEMMs, a softmax, three GEMMs back); PyTorch's CPU kernel is a
fused flash-attention loop.

    python bench/bench_attention_cpu.py [--reps 10] [--threads N] [--causal]
"""
from __future__ import annotations

import argparse

import numpy as np

import gpunet
from bench_conv_cpu import blas_threads, median_ms
from gpunet.nn import ScaledDotProductAttention
from gpunet.testing import assert_close


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: NumPy's BLAS threads)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
    tdout = torch.from_numpy(dout)
    attn = ScaledDotProductAttention()

    def step_gpunet():
        attn(q, k, v, is_causal=args.causal)
        return attn.backward(dout)

    def step_torch():
        for t in (tq, tk, tv):
            t.grad = None
        F.scaled_dot_product_attention(tq, tk, tv, is_causal=args.causal).backward(tdout)

    # validate before timing
    out = attn(q, k, v, is_causal=args.causal)
    grads = attn.backward(dout)
    t_out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=args.causal)
    t_out.backward(tdout)
    assert_close(out, t_out.detach().numpy(), tol_scale=8, name="output")
    for name, g, t in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
        assert_close(g, t.grad.numpy(), tol_scale=16, name=name)

    ms_g, ms_t = median_ms([step_gpunet, step_torch], args.reps)
    B, H, L, E = shape
    # 6 GEMMs of 2·L·L·E per (batch, head): q kᵀ and P v forward; dP, dV, dQ, dK backward
    flops = 12 * B * H * L * L * E
    print(f"attention fwd+bwd {shape} causal={args.causal}, float32, {threads} thread(s), "
          f"median of {args.reps}")
    print(f"  gpunet (numpy {np.__version__}): {ms_g:8.2f} ms  ({flops / ms_g / 1e6:.1f} GFLOP/s)")
    print(f"  torch {torch.__version__}:   {ms_t:8.2f} ms  ({flops / ms_t / 1e6:.1f} GFLOP/s)")
    print(f"  gpunet / torch time ratio: {ms_g / ms_t:.2f}")


if __name__ == "__main__":
    gpunet.manual_seed(0)
    main()
