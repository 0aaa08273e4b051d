"""Rosenblatt's perceptron: it learns any linearly separable set and never XOR.

The perceptron rule (for each misclassified x: w <- w + lr*t*x, b <- b + lr*t)
is run epoch after epoch until an epoch makes no mistake. On two separable
point clouds that happens after a few epochs; on XOR's four points some point
is always wrong, for ever. A hidden layer fixes it: the textbook hand-built
XOR network of step units is evaluated at the end.

With --dtype bfloat16 or float16 the perceptrons keep their weights, the
data and the rule's arithmetic in that dtype. There is nothing for autocast
to do here (it lowers GEMMs, and the rule is one dot product and one
addition per example), so the half dtype is the storage dtype, as in a model
moved with `.to(dtype=...)`: the separable set still converges (its margin
is far above the half types' rounding) and XOR still cannot.

    python examples/perceptron.py [--device cpu|sim|cuda|cupy|auto] [--quick] [--dtype float32|bfloat16|float16]
"""
import argparse

import numpy as np

import gpunet
from gpunet.perceptron import Perceptron


def separable_points(n: int, seed: int = 0):
    """Two clouds on either side of the line x1 + 2 x2 = 0.5, with a margin."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(4 * n, 2))
    score = x[:, 0] + 2 * x[:, 1] - 0.5
    keep = np.abs(score) > 0.3
    x, score = x[keep][:n], score[keep][:n]
    return x.astype(np.float32), np.where(score > 0, 1.0, -1.0).astype(np.float32)


XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_T = np.array([-1, 1, 1, -1], dtype=np.float32)


def accuracy(model, x, t, device):
    pred = gpunet.to_numpy(model(gpunet.asarray(x, device=device, dtype=model.dtype)))
    return float((pred == t).mean())


def step(net):
    """The lecture notes' step unit: 1 iff net > 1."""
    return (net > 1).astype(np.float32)


def hand_built_xor(x):
    """h1 = step(x1 - x2 + 1), h2 = step(-x1 + x2 + 1), out = step(h1 + h2 + 0.5)."""
    h1 = step(x[:, 0] - x[:, 1] + 1)
    h2 = step(-x[:, 0] + x[:, 1] + 1)
    return step(h1 + h2 + 0.5)


def main(device: str = "auto", quick: bool = False, max_epochs: int = 100, dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    dtype = gpunet.amp.autocast_dtype(dtype) or gpunet.float32  # checks the name; the storage dtype here
    gpunet.manual_seed(0)
    x, t = separable_points(100 if quick else 400)
    print(f"perceptrons in {np.dtype(dtype).name} on {device}")
    p = Perceptron(2).to(device, dtype).fit(x, t, lr=0.1, max_epochs=max_epochs)
    w = gpunet.to_numpy(p.weight.data)[0].astype(np.float32)
    b = float(gpunet.to_numpy(p.bias.data)[0])
    sep_acc = accuracy(p, x, t, device)
    print(f"separable set ({len(x)} points): converged={p.converged_} after {p.epochs_} epochs, "
          f"mistakes per epoch {p.errors_}")
    print(f"  learned boundary {w[0]:+.3f} x1 {w[1]:+.3f} x2 {b:+.3f} = 0 (true: x1 + 2 x2 - 0.5 = 0, up to scale); "
          f"training accuracy {sep_acc:.3f}")

    xor = Perceptron(2).to(device, dtype).fit(XOR_X, XOR_T, lr=0.1, max_epochs=max_epochs)
    xor_acc = accuracy(xor, XOR_X, XOR_T, device)
    print(f"XOR: converged={xor.converged_} after {xor.epochs_} epochs; mistakes in the last 5 epochs "
          f"{xor.errors_[-5:]}; accuracy {xor_acc:.2f} (no line separates XOR: at most 3 of 4)")

    hand = hand_built_xor(XOR_X)
    print(f"hand-built 2-2-1 step network on XOR: outputs {hand.astype(int).tolist()} "
          f"for inputs {XOR_X.astype(int).tolist()}")
    result = {"separable_converged": p.converged_, "separable_epochs": p.epochs_, "separable_accuracy": sep_acc,
              "xor_converged": xor.converged_, "xor_accuracy": xor_acc}
    if quick:
        assert p.converged_ and sep_acc == 1.0, result
        assert not xor.converged_ and xor_acc <= 0.75, result
        assert hand.tolist() == [0, 1, 1, 0]
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="small run that asserts the expected outcome")
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--dtype", choices=gpunet.amp.options.CHOICES, default="float32",
                    help="the perceptrons' storage and arithmetic dtype (no GEMM here for autocast to lower)")
    args = ap.parse_args()
    main(args.device, args.quick, args.max_epochs, args.dtype)
