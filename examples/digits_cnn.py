"""A convolutional network on real handwritten digits, offline.

scikit-learn bundles 1,797 8x8 grey images of the digits 0-9 (UCI optical
recognition data). The network is conv 3x3 -> ReLU -> max-pool, twice, then
one Linear layer (digits_cnn in gpunet.models), trained with Adam and a
cosine learning-rate decay on 70% of the images, watched on 10% and tested
once on the remaining 20%. Writes a checkpoint after every epoch (rerun to
resume) and a PNG of the learning curves.

    python examples/digits_cnn.py [--device cpu|sim|cuda|cupy|auto] [--epochs 20] [--out runs/digits] [--quick]
                                  [--autograd] [--dtype float32|bfloat16|float16]

Data-parallel on 2 processes (gpunet.distributed over MPI; --batch-size is
the global batch, each process computing its half, so the run learns as the
1-process one does; one GPU per process on cuda/cupy):

    mpiexec -n 2 python examples/digits_cnn.py --distributed
"""
import argparse
import os
import time

import gpunet
from gpunet import models, nn, optim
from gpunet.data import DataLoader, digits_splits


def loaders(train, val, test, batch_size: int, seed: int, device: str, distributed: bool):
    """Train/validation/test loaders; distributed: this process's share of each."""
    if not distributed:
        return (DataLoader(train, batch_size, shuffle=True, seed=seed, device=device),
                DataLoader(val, 256, device=device), DataLoader(test, 256, device=device))
    from gpunet.distributed import DistributedSampler
    return (DataLoader(train, batch_size, sampler=DistributedSampler(train, seed=seed), device=device),
            DataLoader(val, 256, sampler=DistributedSampler(val, shuffle=False), device=device),
            DataLoader(test, 256, sampler=DistributedSampler(test, shuffle=False), device=device))


def per_process(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise SystemExit(f"--batch-size {batch_size} must split evenly over {world_size} processes")
    return batch_size // world_size


def main(device: str = "auto", quick: bool = False, epochs: int = 20, batch_size: int = 32, lr: float = 2e-3,
         out: str = "runs/digits", seed: int = 0, distributed: bool = False, autograd: bool = False,
         dtype: str = "float32") -> dict:
    lead = True  # the process that prints
    if distributed:
        from gpunet import distributed as dist
        dist.init_process_group()
        device, lead = dist.local_device(device), dist.get_rank() == 0
        batch_size = per_process(batch_size, dist.get_world_size())
    device = gpunet.get_backend(device).device
    say = print if lead else (lambda *a: None)
    gpunet.manual_seed(seed)
    train, val, test = digits_splits(val=0.1, test=0.2, seed=seed)
    width = 32
    if quick:  # a narrower net for a few epochs: seconds on a laptop, still well above 90%
        epochs, width = 6, 16
    model = models.digits_cnn(in_channels=1, image_size=8, num_classes=10, width=width).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    say(f"digits CNN ({sum(p.numel() for p in model.parameters()):,} parameters) on {device}: "
        f"{len(train)} train / {len(val)} validation / {len(test)} test images"
        + (f"; {dist.get_world_size()} processes" if distributed else ""))
    train_loader, val_loader, test_loader = loaders(train, val, test, batch_size, seed, device, distributed)
    start = time.perf_counter()
    amp = gpunet.amp.autocast_dtype(dtype)
    history = gpunet.fit(
        model, loss_fn, opt, train_loader, val_loader,
        epochs=epochs, scheduler=sched, autograd=autograd, amp=amp,
        checkpoint_path=None if quick else os.path.join(out, "checkpoint.npz"),
        plot_path=None if quick else os.path.join(out, "curves.png"), distributed=distributed)
    seconds = time.perf_counter() - start
    result = gpunet.evaluate(model, loss_fn, test_loader, distributed=distributed, amp=amp)
    say(f"test accuracy {result['accuracy']:.4f} on {len(test)} held-out images "
        f"(training {seconds:.1f}s, {len(history.epochs)} epochs)")
    if not quick:
        say(f"checkpoint: {os.path.join(out, 'checkpoint.npz')}   learning curves: {os.path.join(out, 'curves.png')}")
    if quick:
        assert result["accuracy"] >= 0.90, result
    return {"test_accuracy": result["accuracy"], "seconds": seconds, "epochs": len(history.epochs)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="a few epochs of a smaller net; asserts >= 90%% test accuracy")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default="runs/digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over the processes of mpiexec -n N (pip install mpi4py mpich)")
    ap.add_argument("--autograd", action="store_true",
                    help="train through loss.backward() on Tensors (the same kernels) instead of the explicit backward")
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.epochs, args.batch_size, args.lr, args.out, args.seed, args.distributed,
         args.autograd, args.dtype)
