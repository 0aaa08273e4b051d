"""Console command: `python -m gpunet` (installed as `gpunet-train`).

    python -m gpunet backends
    python -m gpunet train --model digits_cnn --dataset digits --epochs 15 --out runs/digits
    gpunet-train --model digits_cnn --dataset digits      (the same; "train" is implied)
    python -m gpunet train ... --dtype bfloat16          (mixed precision; float16 adds a GradScaler)

`train` splits the data into train/validation/test, trains with a checkpoint
after every epoch (rerunning the same command resumes), restores the weights
of the lowest validation loss when --patience is given, and prints the test
accuracy and where the checkpoint and the learning-curve plot went.

    mpiexec -n 2 python -m gpunet train --distributed ...

trains data-parallel on 2 processes (gpunet.distributed): --batch-size is the
global batch, split evenly over the processes (so the run learns as one
process does), each reads its share of every split, and rank 0 alone prints
and writes files.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

from . import data, models, nn, optim
from .amp import add_dtype_argument, autocast_dtype
from .backend import backends, get_backend
from .random import manual_seed
from .train import evaluate, fit

IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
TOKEN_DATASETS = ("text", "sort", "reverse")
TOKEN_MODELS = ("char_lstm", "transformer")
OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop}


def _split(dataset, val: float, test: float, seed: int):
    return data.random_split(dataset, [1.0 - val - test, val, test], seed=seed)


def load_dataset(args) -> tuple[tuple, dict, str]:
    """((train, val, test), model kwargs the data implies, a description)."""
    name = args.dataset
    if name == "digits":
        splits = data.digits_splits(val=0.1, test=0.2, seed=args.seed)
        return splits, {"in_channels": 1, "image_size": 8, "num_classes": 10}, "scikit-learn digits, 8x8"
    if name in ("mnist", "fashion_mnist"):
        if not args.data:
            raise SystemExit(f"--dataset {name} needs --data DIR holding the four IDX files "
                             "(train-images-idx3-ubyte[.gz], ...)")
        x, y = data.load_mnist(args.data, "train")
        xt, yt = data.load_mnist(args.data, "test")
        train, val = data.random_split(data.TensorDataset(x, y), [0.9, 0.1], seed=args.seed)
        return (train, val, data.TensorDataset(xt, yt)), \
            {"in_channels": 1, "image_size": 28, "num_classes": 10}, f"{name} from {args.data}"
    if name == "cifar10":
        if args.data:
            x, y = data.load_cifar10(args.data, train=True)
            xt, yt = data.load_cifar10(args.data, train=False)
            train, val = data.random_split(data.TensorDataset(x, y), [0.9, 0.1], seed=args.seed)
            desc = f"CIFAR-10 from {args.data}"
            splits = (train, val, data.TensorDataset(xt, yt))
        else:
            x, y = data.synthetic_cifar(12000, seed=args.seed)
            splits = _split(data.TensorDataset(x, y), 0.1, 0.1, args.seed)
            desc = "SYNTHETIC CIFAR-shaped gratings (no --data given; not real CIFAR-10)"
        return splits, {"in_channels": 3, "image_size": 32, "num_classes": 10}, desc
    if name == "text":
        if not args.data:
            raise SystemExit("--dataset text needs --data FILE (any UTF-8 text file)")
        ds = data.CharDataset.from_file(args.data, args.seq_len)
        return _split(ds, 0.1, 0.1, args.seed), {"vocab_size": ds.vocab_size, "max_len": args.seq_len}, \
            f"characters of {args.data} ({ds.vocab_size} distinct)"
    x, y = data.digit_sequences(12000, args.seq_len, task=name, seed=args.seed)
    return _split(data.TensorDataset(x, y), 0.1, 0.1, args.seed), \
        {"vocab_size": 10, "max_len": args.seq_len}, f"{name} random digit sequences of length {args.seq_len}"


def check_pairing(model: str, dataset: str):
    """Token models need token data and image models image data: say so before loading anything."""
    if model in TOKEN_MODELS and dataset not in TOKEN_DATASETS:
        raise SystemExit(f"--model {model} needs a token dataset ({', '.join(TOKEN_DATASETS)})")
    if model not in TOKEN_MODELS and dataset in TOKEN_DATASETS:
        raise SystemExit(f"--model {model} needs an image dataset ({', '.join(IMAGE_DATASETS)})")


def build_model(name: str, shape: dict):
    """The named model with the sizes the dataset implies."""
    if name == "char_lstm":
        return models.create(name, vocab_size=shape["vocab_size"])
    if name == "transformer":
        return models.create(name, vocab_size=shape["vocab_size"], max_len=shape["max_len"])
    if name == "mlp":
        side = shape["image_size"]
        return models.create(name, in_features=shape["in_channels"] * side * side, num_classes=shape["num_classes"])
    return models.create(name, **shape)


def _loaders(args, be, train_set, val_set, test_set):
    """Train, validation and test loaders; distributed: each rank's share of each."""
    if not args.distributed:
        return (data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, device=be),
                data.DataLoader(val_set, 512, device=be), data.DataLoader(test_set, 512, device=be))
    from .distributed import DistributedSampler, get_world_size
    if args.batch_size % get_world_size():
        raise SystemExit(f"--batch-size {args.batch_size} must split evenly over {get_world_size()} processes")
    return (data.DataLoader(train_set, args.batch_size // get_world_size(), device=be,
                            sampler=DistributedSampler(train_set, seed=args.seed)),
            data.DataLoader(val_set, 512, device=be, sampler=DistributedSampler(val_set, shuffle=False)),
            data.DataLoader(test_set, 512, device=be, sampler=DistributedSampler(test_set, shuffle=False)))


def train(args) -> dict:
    check_pairing(args.model, args.dataset)
    manual_seed(args.seed)
    lead = True  # the process that prints and writes files
    if args.distributed:
        from . import distributed as dist
        dist.init_process_group()
        lead = dist.get_rank() == 0
        be = get_backend(dist.local_device(args.device))
    else:
        be = get_backend(args.device)
    say = print if lead else (lambda *a, **k: None)
    (train_set, val_set, test_set), shape, desc = load_dataset(args)
    model = build_model(args.model, shape).to(be)
    n_params = sum(p.numel() for p in model.parameters())
    if args.distributed:
        desc += f"; {dist.get_world_size()} processes (data-parallel)"
    say(f"gpunet: {args.model} ({n_params:,} parameters) on {desc}; device {be.device}; "
          f"{len(train_set)} train / {len(val_set)} validation / {len(test_set)} test samples", flush=True)
    opt_cls = OPTIMIZERS[args.optimizer]
    kwargs = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        kwargs["momentum"] = 0.9
    optimizer = opt_cls(model.parameters(), **kwargs)
    scheduler = None
    if args.schedule == "cosine":
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loader, val_loader, test_loader = _loaders(args, be, train_set, val_set, test_set)
    os.makedirs(args.out, exist_ok=True)
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    plot = os.path.join(args.out, "curves.png")
    if importlib.util.find_spec("matplotlib") is None:
        say("matplotlib is not installed: no plot (pip install matplotlib)", flush=True)
        plot = None
    loss_fn = nn.CrossEntropyLoss()
    amp = autocast_dtype(args.dtype)
    start = time.perf_counter()
    history = fit(model, loss_fn, optimizer, loader, val_loader, epochs=args.epochs,
                  early_stopping_patience=args.patience, checkpoint_path=checkpoint, resume=not args.no_resume,
                  plot_path=plot, scheduler=scheduler, clip_grad_norm=args.clip, progress=not args.quiet,
                  distributed=args.distributed, amp=amp)
    seconds = time.perf_counter() - start
    result = evaluate(model, loss_fn, test_loader, distributed=args.distributed, amp=amp)
    summary = {"model": args.model, "dataset": args.dataset, "device": be.device, "dtype": args.dtype, "epochs": len(history.epochs),
               "seconds": round(seconds, 2), "test_loss": result["loss"], "test_accuracy": result.get("accuracy"),
               "checkpoint": checkpoint, "plot": plot}
    if lead:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    say(f"test accuracy {result.get('accuracy', float('nan')):.4f}  test loss {result['loss']:.4f}  "
        f"({len(test_set)} samples; trained {seconds:.1f}s)")
    say(f"checkpoint: {checkpoint}")
    if plot:
        say(f"learning curves: {plot}")
    return summary


def print_backends():
    rows = backends()
    width = max(len(n) for n in rows)
    for name, info in rows.items():
        mark = "yes" if info["available"] else "no "
        print(f"{name:<{width}}  {mark}  {info['reason']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpunet", description="gpunet: train the example models, list backends.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="which backends work on this machine, and why not")
    t = sub.add_parser("train", help="train a named model on a dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--model", choices=sorted(models.MODELS), default="digits_cnn")
    t.add_argument("--dataset", choices=IMAGE_DATASETS + TOKEN_DATASETS, default="digits")
    t.add_argument("--data", help="directory (mnist, fashion_mnist, cifar10) or text file (text)")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, cupy, sim or auto")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning rate: cosine decay to 0 over the epochs, or constant")
    t.add_argument("--clip", type=float, default=None, help="clip the gradient norm to this value")
    t.add_argument("--patience", type=int, default=None, help="early stopping patience (epochs)")
    t.add_argument("--seq-len", type=int, default=32, help="sequence length (text, sort, reverse)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/run", help="directory for checkpoint.npz, curves.png, summary.json")
    t.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    t.add_argument("--quiet", action="store_true", help="no per-epoch output")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of mpiexec -n N (needs mpi4py: pip install mpi4py mpich)")
    add_dtype_argument(t)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "train")  # `gpunet-train --model ...` means `gpunet train --model ...`
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "backends":
        print_backends()
        return 0
    if args.seq_len < 1 or args.epochs < 0 or args.batch_size < 1:
        raise SystemExit("--seq-len and --batch-size must be positive, --epochs non-negative")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
