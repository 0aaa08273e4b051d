"""LSTM forward+backward on the CPU: gpunet's NumPy backend against PyTorch CPU.

The issue's shape: sequence 100, batch 64, input 512, hidden 512, one layer,
float32. PyTorch runs with as many threads as NumPy's BLAS uses; output, h_n,
c_n, the input gradient and every parameter gradient are checked against
PyTorch before timing.

    python bench/bench_lstm_cpu.py [--reps 5] [--threads N] [--seq 100 --batch 64 --input 512 --hidden 512]
"""
import argparse

import numpy as np

import gpunet
from bench_conv_cpu import blas_threads, median_ms  # the CPU benchmarks' shared timing helpers
from gpunet.nn import LSTM
from gpunet.testing import assert_close


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: NumPy's BLAS threads)")
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args()
    import torch

    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    T, B, I, H = args.seq, args.batch, args.input, args.hidden
    gpunet.manual_seed(0)
    lstm = LSTM(I, H)
    ref = torch.nn.LSTM(I, H)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def step_gpunet():
        lstm.zero_grad()
        lstm(x)
        return lstm.backward(dy)

    def step_torch():
        xt.grad = None
        ref.zero_grad()
        out, _ = ref(xt)
        out.backward(dyt)

    lstm.zero_grad()
    y, (h, c) = lstm(x)
    dx = lstm.backward(dy)
    yt, (ht, ct) = ref(xt)
    yt.backward(dyt)
    for name, ours, theirs in (("output", y, yt), ("h_n", h, ht), ("c_n", c, ct), ("grad input", dx, xt.grad)):
        assert_close(ours, theirs.detach().numpy(), tol_scale=10, name=name)
    # weight gradients sum T*B products with cancellation: scale atol by the largest entry
    for name, p in lstm.named_parameters():
        theirs = dict(ref.named_parameters())[name].grad.numpy()
        assert_close(p.grad, theirs, atol=1e-5 * float(np.abs(theirs).max()), name=f"grad {name}")

    t_ours, t_torch = median_ms([step_gpunet, step_torch], args.reps)
    flops = 2 * 3 * T * B * 4 * H * (I + H)  # forward GEMMs and the two backward ones, x, w_ih and w_hh
    print(f"LSTM({I}, {H}) fwd+bwd, seq {T}, batch {B}, float32, {threads} thread(s), median of {args.reps}")
    print(f"  gpunet cpu : {t_ours:9.2f} ms   ({flops / t_ours / 1e6:.1f} GFLOP/s of GEMM work)")
    print(f"  torch cpu  : {t_torch:9.2f} ms   (torch {torch.__version__})")
    print(f"  ratio gpunet/torch: {t_ours / t_torch:.2f}x")


if __name__ == "__main__":
    main()
