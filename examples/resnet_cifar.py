"""A small residual network (ResNet basic blocks with BatchNorm) on
CIFAR-10-shaped images.

With --data DIR pointing at the extracted CIFAR-10 binary version
(cifar-10-batches-bin, from https://www.cs.toronto.edu/~kriz/cifar.html) it
trains on real CIFAR-10 with random crops and flips. Without it, it trains on
a SYNTHETIC CIFAR-shaped task (coloured gratings whose class is their
orientation and palette, see gpunet.data.synthetic_cifar) and says so: that
checks the whole pipeline runs and learns, it is not a CIFAR-10 result.

    python examples/resnet_cifar.py [--device cpu|sim|cuda|cupy|auto] [--data DIR] [--epochs 6] [--quick]
"""
import argparse
import time

import numpy as np

import gpunet
from gpunet import models, nn, optim
from gpunet.data import DataLoader, Dataset, TensorDataset, load_cifar10, random_split, synthetic_cifar


class CropFlip(Dataset):
    """Training augmentation on whole batches: pad by 4 pixels (zeros), take a
    random 32x32 crop and flip half of the images left-right."""

    def __init__(self, images, labels, pad: int = 4, seed: int = 0):
        self.images, self.labels, self.pad = images, labels, pad
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.__getitems__(np.array([i]))

    def __getitems__(self, idx):
        x = self.images[idx]
        n, c, h, w = x.shape
        p = self.pad
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        oy = self.rng.integers(0, 2 * p + 1, n)
        ox = self.rng.integers(0, 2 * p + 1, n)
        rows = (oy[:, None] + np.arange(h))[:, None, :, None]  # (n, 1, h, 1)
        cols = (ox[:, None] + np.arange(w))[:, None, None, :]  # (n, 1, 1, w)
        flip = self.rng.random(n) < 0.5
        cols = np.where(flip[:, None, None, None], cols[..., ::-1], cols)
        crops = padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]
        return np.ascontiguousarray(crops), self.labels[idx]


def load(data_dir, quick: bool, train_size: int, seed: int):
    """(train, val, test datasets, image size, description)."""
    if data_dir:
        x, y = load_cifar10(data_dir, train=True)
        xt, yt = load_cifar10(data_dir, train=False)
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        std = x.std(axis=(0, 2, 3), keepdims=True)
        x, xt = (x - mean) / std, (xt - mean) / std
        perm = np.random.default_rng(seed).permutation(len(x))
        tr, va = perm[:-5000], perm[-5000:]
        return (CropFlip(x[tr], y[tr], seed=seed), TensorDataset(x[va], y[va]), TensorDataset(xt, yt), 32,
                f"CIFAR-10 from {data_dir}")
    size = 16 if quick else 32
    n = train_size
    held_out = 400 if quick else 1000
    x, y = synthetic_cifar(n + 2 * held_out, image_size=size, seed=seed)
    train, val, test = random_split(TensorDataset(x, y), [n, held_out, held_out], seed=seed)
    return train, val, test, size, f"SYNTHETIC CIFAR-shaped data ({size}x{size} gratings; pass --data for real CIFAR-10)"


def main(device: str = "auto", quick: bool = False, data: str = None, epochs: int = 6, batch_size: int = 64,
         lr: float = 2e-3, width: int = 16, train_size: int = 4000, seed: int = 0,
         dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    gpunet.manual_seed(seed)
    if quick:
        data, epochs, width, train_size = None, 4, 8, 800
    train, val, test, size, desc = load(data, quick, train_size, seed)
    model = models.resnet_small(in_channels=3, image_size=size, num_classes=10, width=width).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    print(f"resnet_small ({sum(p.numel() for p in model.parameters()):,} parameters) on {device}; {desc}; "
          f"{len(train)} train / {len(val)} validation / {len(test)} test images")
    start = time.perf_counter()
    amp = gpunet.amp.autocast_dtype(dtype)
    history = gpunet.fit(model, loss_fn, opt, DataLoader(train, batch_size, shuffle=True, seed=seed, device=device),
                         DataLoader(val, 500, device=device), epochs=epochs, scheduler=sched, amp=amp)
    seconds = time.perf_counter() - start
    result = gpunet.evaluate(model, loss_fn, DataLoader(test, 500, device=device), amp=amp)
    what = "real CIFAR-10" if data else "the SYNTHETIC stand-in, not CIFAR-10"
    print(f"test accuracy {result['accuracy']:.4f} on {what} (training {seconds:.1f}s)")
    if quick:
        assert result["accuracy"] >= 0.85, result
    return {"test_accuracy": result["accuracy"], "seconds": seconds, "epochs": len(history.epochs),
            "synthetic": data is None}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic run; asserts >= 85%% test accuracy")
    ap.add_argument("--data", default=None, help="CIFAR-10 binary directory (cifar-10-batches-bin)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage (then 2x, 4x)")
    ap.add_argument("--train-size", type=int, default=4000, help="synthetic training images")
    ap.add_argument("--seed", type=int, default=0)
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.data, args.epochs, args.batch_size, args.lr, args.width, args.train_size,
         args.seed, args.dtype)
