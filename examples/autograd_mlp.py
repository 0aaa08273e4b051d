"""An MLP on the handwritten digits written only with Tensor operations:
the forward is plain arithmetic on gpunet.Tensor, and `loss.backward()`
computes every gradient (gpunet/autograd), no explicit backward anywhere.

The weights are leaf Tensors created with requires_grad=True; the hidden
layer is tanh(x W1ᵀ + b1), the output a log-softmax written out as
z - log(sum(exp(z - max z))) and the loss its negative mean at the labels,
picked by integer-array indexing. Adam updates the leaves in place.

Mixed precision (--dtype bfloat16|float16): gpunet.amp.autocast lowers
modules (nn.Linear, ...), and this forward has none, so it does by hand
what autocast does to a matmul: both GEMM operands cast to the half dtype,
the product accumulated in float32 and rounded once to it; the bias add
promotes back to float32, and tanh, the log-softmax and the loss run in
float32, as in PyTorch's autocast. The weights stay float32 (the casts'
gradients flow back to them). float16 scales the loss with a GradScaler
(its inf check fused into Adam's update on sim and cuda).

    python examples/autograd_mlp.py [--device cpu|sim|cuda|cupy|auto] [--epochs 30] [--quick]
                                    [--dtype float32|bfloat16|float16]
"""
import argparse
import math
import time

import gpunet
from gpunet import optim
from gpunet.data import DataLoader, digits_splits


def init_layer(fan_in: int, fan_out: int, device):
    bound = 1.0 / math.sqrt(fan_in)
    w = (gpunet.rand(fan_out, fan_in, device=device) * 2 - 1) * bound
    b = (gpunet.rand(fan_out, device=device) * 2 - 1) * bound
    return w.requires_grad_(), b.requires_grad_()


def gemm(a, b, amp=None):
    """a @ b; with a half dtype `amp`, as autocast computes a matmul: half
    operands, float32 accumulation, the product rounded once to `amp`."""
    if amp is None:
        return a @ b
    return (a.to(amp) @ b.to(amp)).to(amp)


def forward(params, x, amp=None):
    w1, b1, w2, b2 = params
    h = (gemm(x, w1.T, amp) + b1).tanh()  # + b1 (float32) promotes back to float32
    return gemm(h, w2.T, amp) + b2


def nll(logits, y):
    z = logits - logits.max(dim=1, keepdim=True).values.detach()
    logp = z - z.exp().sum(dim=1, keepdim=True).log()
    return -logp[gpunet.arange(y.shape[0], device=y.device), y].mean()


def accuracy(params, x, y, amp=None) -> float:
    with gpunet.no_grad():
        return (forward(params, x, amp).argmax(dim=1) == y).float().mean().item()


def main(device: str = "auto", quick: bool = False, epochs: int = 30, batch_size: int = 64, lr: float = 3e-3,
         hidden: int = 64, seed: int = 0, dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    amp = gpunet.amp.autocast_dtype(dtype)
    gpunet.manual_seed(seed)
    splits = digits_splits(val=0.1, test=0.2, seed=seed)
    # each split whole, as Tensors: images flattened to 64 features
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (gpunet.tensor(x, device=device).flatten(1), gpunet.tensor(y, device=device))
        for x, y in (next(iter(DataLoader(d, len(d)))) for d in splits))
    if quick:
        epochs = 8
    params = [*init_layer(64, hidden, device), *init_layer(hidden, 10, device)]
    opt = optim.Adam(params, lr=lr)
    scaler = gpunet.amp.GradScaler(enabled=amp == gpunet.float16)
    print(f"MLP 64-{hidden}-10 in Tensor operations on {device} ({dtype}): {len(x_train)} train / "
          f"{len(x_val)} validation / {len(x_test)} test images")
    start = time.perf_counter()
    n = len(x_train)
    for epoch in range(1, epochs + 1):
        order = gpunet.randperm(n, device=device)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = nll(forward(params, x_train[idx], amp), y_train[idx])
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item() * len(idx)
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            val = accuracy(params, x_val, y_val, amp)
            print(f"epoch {epoch}/{epochs}  loss {total / n:.4f}  val_accuracy {val:.4f}")
    seconds = time.perf_counter() - start
    test_acc = accuracy(params, x_test, y_test, amp)
    print(f"test accuracy {test_acc:.4f} on {len(x_test)} held-out images (training {seconds:.1f}s)")
    if quick:
        assert test_acc >= 0.90, test_acc
    return {"test_accuracy": test_acc, "seconds": seconds}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="8 epochs; asserts >= 90%% test accuracy")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.epochs, args.batch_size, args.lr, args.hidden, args.seed, args.dtype)
