"""Load PyTorch weights into gpunet and check both frameworks agree.

gpunet keeps PyTorch's parameter names, shapes and layouts, so a torch
state_dict loads as it is: `model.load_state_dict({k: v.numpy() for k, v in
torch_model.state_dict().items()})`. This builds the same CNN and the same
LSTM in both, copies torch's random weights over, and compares outputs,
input gradients and weight gradients. PyTorch is optional: without it the
example says so and exits.

--dtype bfloat16|float16 runs both under autocast in that dtype (torch's CPU
autocast; for float16 the LSTM's reference is torch's float32 run, its CPU
LSTM having no float16 kernel) and accepts differences of the half dtype's
rounding (agreement_bar).

    python examples/torch_import.py [--device cpu|sim|cuda|cupy|auto] [--quick] [--dtype float32|bfloat16|float16]
"""
import argparse

import numpy as np

import gpunet
from gpunet import models, nn


BAR_ULPS = 2


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(gpunet.to_numpy(a), np.float64) - np.asarray(b, np.float64))))


def compare_cnn(torch, device, amp=None):
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
    with torch_autocast(torch, amp):
        out_t = ref(xt)
        loss_t = tnn.functional.cross_entropy(out_t, torch.tensor(y))
    loss_t.backward()

    crit = nn.CrossEntropyLoss().to(device)
    with gpunet.amp.autocast(dtype=amp, enabled=amp is not None):
        out = model(gpunet.asarray(x, device=device))
        loss = crit(out, gpunet.asarray(y.astype(np.int64), device=device))
    dx = model.backward(crit.backward())
    grads = dict(model.named_parameters())
    diffs = {"logits": max_diff(out, out_t.detach().float().numpy()),
             "loss": max_diff(loss, loss_t.item()),
             "d input": max_diff(dx, xt.grad.numpy())}
    diffs["d weights (worst)"] = max(max_diff(grads[k].grad, p.grad.numpy()) for k, p in ref.named_parameters())
    return diffs


def compare_lstm(torch, device, amp=None):
    torch.manual_seed(1)
    ref = torch.nn.LSTM(5, 12, num_layers=2, batch_first=True)
    lstm = nn.LSTM(5, 12, num_layers=2, batch_first=True)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    lstm.to(device)
    x = np.random.default_rng(1).standard_normal((3, 7, 5)).astype(np.float32)
    # PyTorch's CPU LSTM has no float16 kernel: under float16 its float32 run is the reference
    with torch_autocast(torch, None if amp == gpunet.float16 else amp):
        out_t, _ = ref(torch.tensor(x))
    with gpunet.amp.autocast(dtype=amp, enabled=amp is not None):
        out, _ = lstm(gpunet.asarray(x, device=device))
    return {"lstm outputs": max_diff(out, out_t.detach().float().numpy())}


def agreement_bar(amp) -> float:
    """Largest absolute difference accepted: 1e-4 in float32; under autocast
    BAR_ULPS units in the last place of the half dtype at 1 (the compared values
    are of order 1: each framework rounds its GEMM outputs to the half dtype
    in its own summation order, and the roundings travel through the layers)."""
    return 1e-4 if amp is None else BAR_ULPS * float(gpunet.dtypes.finfo(amp).eps)


def torch_autocast(torch, amp):
    """PyTorch's autocast on the CPU in the same dtype (off for float32)."""
    dtype = getattr(torch, np.dtype(amp).name) if amp is not None else None
    return torch.autocast("cpu", dtype=dtype, enabled=amp is not None)


def main(device: str = "auto", quick: bool = False, dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    amp = gpunet.amp.autocast_dtype(dtype)
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare (pip install torch to run this example)")
        return {"skipped": True}
    diffs = {**compare_cnn(torch, device, amp), **compare_lstm(torch, device, amp)}
    print(f"PyTorch {torch.__version__} weights loaded into gpunet on {device}"
          f"{'' if amp is None else f', both under autocast({dtype})'}; largest absolute differences:")
    for name, d in diffs.items():
        print(f"  {name:<18} {d:.2e}")
    bar = agreement_bar(amp)
    worst = max(diffs.values())
    print(f"agree to {dtype} rounding (bar {bar:.1e})" if worst < bar else f"DISAGREE beyond {dtype} rounding")
    if quick:
        assert worst < bar, diffs
    return {"skipped": False, **diffs}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="assert agreement (1e-4 in float32)")
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.dtype)
