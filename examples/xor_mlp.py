"""XOR with the textbook 2-2-1 network: two tanh hidden units, one sigmoid
output, trained by full-batch gradient descent with backpropagation.

The training step is written out by hand to show gpunet's explicit API:
forward, loss, loss.backward -> model.backward, optimizer step, zero_grad.
A 2-2-1 net has local minima where it solves only 3 of the 4 points, so the
example trains from several random initialisations and reports each.

    python examples/xor_mlp.py [--device cpu|sim|cuda|cupy|auto] [--quick]
"""
import argparse

import numpy as np

import gpunet
from gpunet import nn, optim

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
T = np.array([[0], [1], [1], [0]], dtype=np.float32)


def train_once(seed: int, device, epochs: int, lr: float, amp=None):
    gpunet.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).to(device)
    loss_fn = nn.BCEWithLogitsLoss().to(device)  # sigmoid output + cross-entropy, fused for stability
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, t = gpunet.asarray(X, device=device), gpunet.asarray(T, device=device)
    # mixed precision (amp: a half dtype): forward and loss under autocast; float16 scales the loss gradient
    scaler = gpunet.amp.GradScaler(enabled=amp == gpunet.float16)
    for _ in range(epochs):
        with gpunet.amp.autocast(dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(x), t)
        model.backward(scaler.scale(loss_fn.backward()), input_grad=False)  # no gradient for the data
        scaler.step(opt)
        scaler.update()
        model.zero_grad()
    with gpunet.no_grad():
        prob = 1 / (1 + np.exp(-gpunet.to_numpy(model(x)).astype(np.float64)))
    return float(gpunet.to_numpy(loss)), prob.ravel()


def main(device: str = "auto", quick: bool = False, restarts: int = 5, epochs: int = 500, lr: float = 0.5,
         dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    if quick:
        restarts, epochs = 3, 300
    solved = []
    for seed in range(restarts):
        loss, prob = train_once(seed, device, epochs, lr, gpunet.amp.autocast_dtype(dtype))
        ok = bool(((prob > 0.5) == (T.ravel() > 0.5)).all())
        solved.append(ok)
        print(f"init {seed}: loss {loss:.4f}  P(y=1 | 00, 01, 10, 11) = {np.round(prob, 3).tolist()}  "
              f"{'solved' if ok else 'stuck in a local minimum'}")
    print(f"{sum(solved)} of {restarts} initialisations solve XOR with 2 hidden units")
    if quick:
        assert any(solved), "no initialisation solved XOR"
    return {"solved": sum(solved), "restarts": restarts}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="small run that asserts the expected outcome")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--lr", type=float, default=0.5)
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.restarts, args.epochs, args.lr, args.dtype)
