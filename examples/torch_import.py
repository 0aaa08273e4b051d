"""Load PyTorch weights into gpunet and check both frameworks agree.

gpunet keeps PyTorch's parameter names, shapes and layouts, so a torch
state_dict loads as it is: `model.load_state_dict({k: v.numpy() for k, v in
torch_model.state_dict().items()})`. This builds the same CNN and the same
LSTM in both, copies torch's random weights over, and compares outputs,
input gradients and weight gradients. PyTorch is optional: without it the
example says so and exits.

    python examples/torch_import.py [--device cpu|sim|cuda|cupy|auto] [--quick]
"""
import argparse

import numpy as np

import gpunet
from gpunet import models, nn


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(gpunet.to_numpy(a), np.float64) - np.asarray(b, np.float64))))


def compare_cnn(torch, device):
    tnn = torch.nn
    torch.manual_seed(0)
    ref = tnn.Sequential(tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Flatten(), tnn.Linear(16 * 2 * 2, 10))
    model = models.digits_cnn(in_channels=1, image_size=8, num_classes=10, width=8)
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    model.to(device)
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    y = np.arange(16) % 10

    xt = torch.tensor(x, requires_grad=True)
    loss_t = tnn.functional.cross_entropy(ref(xt), torch.tensor(y))
    loss_t.backward()

    crit = nn.CrossEntropyLoss().to(device)
    out = model(gpunet.asarray(x, device=device))
    loss = crit(out, gpunet.asarray(y.astype(np.int64), device=device))
    dx = model.backward(crit.backward())
    grads = dict(model.named_parameters())
    diffs = {"logits": max_diff(out, ref(torch.tensor(x)).detach().numpy()),
             "loss": max_diff(loss, loss_t.item()),
             "d input": max_diff(dx, xt.grad.numpy())}
    diffs["d weights (worst)"] = max(max_diff(grads[k].grad, p.grad.numpy()) for k, p in ref.named_parameters())
    return diffs


def compare_lstm(torch, device):
    torch.manual_seed(1)
    ref = torch.nn.LSTM(5, 12, num_layers=2, batch_first=True)
    lstm = nn.LSTM(5, 12, num_layers=2, batch_first=True)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    lstm.to(device)
    x = np.random.default_rng(1).standard_normal((3, 7, 5)).astype(np.float32)
    out_t, _ = ref(torch.tensor(x))
    out, _ = lstm(gpunet.asarray(x, device=device))
    return {"lstm outputs": max_diff(out, out_t.detach().numpy())}


def main(device: str = "auto", quick: bool = False) -> dict:
    device = gpunet.get_backend(device).device
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare (pip install torch to run this example)")
        return {"skipped": True}
    diffs = {**compare_cnn(torch, device), **compare_lstm(torch, device)}
    print(f"PyTorch {torch.__version__} weights loaded into gpunet on {device}; largest absolute differences:")
    for name, d in diffs.items():
        print(f"  {name:<18} {d:.2e}")
    worst = max(diffs.values())
    print("agree to float32 rounding" if worst < 1e-4 else "DISAGREE beyond float32 rounding")
    if quick:
        assert worst < 1e-4, diffs
    return {"skipped": False, **diffs}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="assert agreement to 1e-4")
    args = ap.parse_args()
    main(args.device, args.quick)
