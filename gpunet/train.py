"""Training loop: `fit`, `evaluate` and the `Trainer` behind them.

A step is: batch (already on the device, the next one copying) -> forward ->
loss -> backward -> optional gradient clipping -> optimizer step. Running
sums of the loss and of correct predictions stay on the device as 0-d arrays;
they come back as Python floats only every `log_every` steps (for the progress
bar) and at the end of an epoch, so the GPU never waits on the host inside
the step.

Batches are tuples `(inputs..., target)`: every element but the last is passed
to the model. "accuracy" means argmax over axis 1 of the output equals an
integer target (CrossEntropyLoss's layout: (N, C) or (N, C, d1, ...)).

Checkpoints (gpunet.save, written atomically) hold the model, optimizer,
scheduler, history, early-stopping state, the epoch and gpunet's random state,
so `fit(..., checkpoint_path=p)` interrupted and rerun continues where it
stopped and ends with the same weights as an uninterrupted run.

Mixed precision (`amp=gpunet.bfloat16` or float16): each step's forward and
loss run under gpunet.amp.autocast (the backward and the step outside it, as
PyTorch recommends); `grad_scaler=` (a gpunet.amp.GradScaler, made by default
for float16) scales the loss gradient, skips steps with inf/NaN gradients
(History's "skipped_steps" counts them per epoch) and is saved in the checkpoint.

Distributed (`distributed=True`, one process per rank under mpiexec): the
model is wrapped in gpunet.distributed.DistributedDataParallel, the training
loader must read through a DistributedSampler, epoch metrics (training and
validation) are sums and counts reduced over the ranks, so every rank gets
the same history and takes the same early-stopping and scheduler decisions;
rank 0 alone prints and writes the checkpoint and the plot (mid-epoch
progress shows rank 0's running loss), and every rank resumes from the same
checkpoint file.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import os
import sys
import time

import numpy as np

from . import dtypes, random as gpurandom
from .amp import GradScaler, autocast
from .backend import get_backend, to_numpy
from .autograd import modules as autograd_modules
from .autograd.tensor import Tensor
from .nn.module import Module, no_grad
from .nn.utils import clip_grad_norm_

METRICS = ("loss", "accuracy")


class History:
    """Per-epoch learning curves: `history["val_loss"]` is a list with one
    value per epoch; keys are the metric names, their "val_" twins, "lr",
    "seconds" and "samples_per_s". `best_epoch` is the 1-based epoch of the
    lowest validation loss (None without validation)."""

    def __init__(self):
        self.epochs: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.best_epoch: int | None = None
        self.stopped_early = False

    def append(self, epoch: int, values: dict):
        self.epochs.append(epoch)
        for k, v in values.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def last(self, key, default=None):
        vals = self.history.get(key)
        return vals[-1] if vals else default

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()},
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict):
        self.epochs = [int(e) for e in state["epochs"]]
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.stopped_early = bool(state["stopped_early"])

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items() if v)
        return f"History(epochs={len(self.epochs)}, {last})"


# ---------------------------------------------------------------- device-side helpers
def _array(x):
    return x._data if isinstance(x, Tensor) else x


def _correct(out, target):
    """Number of correct class predictions as a 0-d device array, or None when
    the target is not class indices matching the output's layout."""
    if target.dtype.kind not in "iu" or out.ndim != target.ndim + 1 or out.ndim < 2:
        return None
    return (out.argmax(axis=1) == target).sum()


# ---------------------------------------------------------------- progress output
class _Progress:
    """A tqdm bar on a terminal (when tqdm is installed), plain lines otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.use_tqdm = False
        if enabled and sys.stderr.isatty():
            self.use_tqdm = importlib.util.find_spec("tqdm") is not None

    def start_epoch(self, epoch: int, epochs: int, steps: int):
        if self.use_tqdm:
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                            dynamic_ncols=True)

    def update(self, steps: int, loss: float | None, samples_per_s: float):
        if self.bar is not None:
            self.bar.update(steps)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{samples_per_s:,.0f}")

    def end_epoch(self, line: str):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.write(line)

    def write(self, line: str):
        if not self.enabled:
            return
        if self.use_tqdm:
            from tqdm import tqdm
            tqdm.write(line)
        else:
            print(line, flush=True)


# ---------------------------------------------------------------- the trainer
class Trainer:
    """Holds a model, its loss and optimizer on one backend; `train_epoch` and
    `evaluate` run one pass over a DataLoader. `fit` drives it over epochs."""

    def __init__(self, model, loss_fn, optimizer, device=None, metrics=METRICS, clip_grad_norm=None,
                 log_every: int = 50, distributed: bool = False, autograd=None, amp=None, grad_scaler=None):
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"metrics: unknown {unknown}; available: {list(METRICS)}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm: expected a positive number or None, got {clip_grad_norm!r}")
        self.distributed = bool(distributed)
        if self.distributed:
            from . import distributed as dist
            if not dist.is_initialized():
                dist.init_process_group()
            if device is not None:
                device = dist.local_device(device)  # on GPUs: one per rank of a node
        self.be = get_backend(device) if device is not None else model.backend
        self.model = model.to(self.be)
        if self.distributed and optimizer is not None and not isinstance(model, dist.DistributedDataParallel):
            self.model = dist.DistributedDataParallel(self.model)  # training: gradients averaged over ranks
        self.rank = dist.get_rank() if self.distributed else 0
        self.loss_fn = loss_fn.to(self.be) if hasattr(loss_fn, "to") else loss_fn
        self.optimizer = optimizer
        self.metrics = tuple(dict.fromkeys(("loss",) + tuple(metrics)))  # the loss is always tracked
        self.clip_grad_norm = clip_grad_norm
        self.log_every = int(log_every)
        # autograd: inputs go in as Tensors and loss.backward() fills the gradients; by default
        # whenever the model or the loss has no explicit backward of its own (a forward written
        # with Tensor operations)
        explicit = all(isinstance(m, Module) and autograd_modules.explicit(m) for m in (model, loss_fn))
        self.autograd = (not explicit) if autograd is None else bool(autograd)
        self.amp = _amp_dtype(amp)
        if grad_scaler is not None and not isinstance(grad_scaler, GradScaler):
            raise TypeError(f"grad_scaler: expected a gpunet.amp.GradScaler or None, got {type(grad_scaler).__name__}")
        if grad_scaler is None and self.amp == dtypes.float16:
            grad_scaler = GradScaler()  # float16 gradients underflow without loss scaling
        self.grad_scaler = grad_scaler

    def _batches(self, loader, epoch):
        if hasattr(loader, "iter_epoch"):
            return loader.iter_epoch(epoch, self.be)
        return ((tuple(self.be.asarray(a) for a in batch)) for batch in loader)

    def _step_outputs(self, batch):
        *inputs, target = batch
        if self.autograd:
            inputs = [Tensor(a, self.be) for a in inputs]
        with autocast(dtype=self.amp, enabled=self.amp is not None):
            out = self.model(*inputs)
            loss = self.loss_fn(out, target)
        return out, target, loss

    def train_epoch(self, loader, epoch: int = 0, progress: _Progress | None = None) -> dict:
        """One pass of optimizer steps over `loader`; returns the epoch's mean
        loss (and accuracy), and its throughput."""
        self.model.train()
        params = list(self.model.parameters())
        sums = _Sums(self.metrics)
        skipped = 0 if self.grad_scaler is None else self.grad_scaler.skipped_steps
        start, since_log = time.perf_counter(), 0
        for step, batch in enumerate(self._batches(loader, epoch), 1):
            self.model.zero_grad()
            out, target, loss = self._step_outputs(batch)
            scaler = self.grad_scaler
            scale = scaler.scale if scaler is not None else (lambda v: v)
            if self.autograd:
                scale(loss).backward()
                out, loss = out._data, loss._data
            else:
                self.model.backward(scale(self.loss_fn.backward()), input_grad=False)  # data needs no gradient
            if self.clip_grad_norm is not None:
                if scaler is not None:
                    scaler.unscale_(self.optimizer)
                clip_grad_norm_(params, self.clip_grad_norm)
            if scaler is not None:
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            sums.add(out, target, loss)
            since_log += 1
            if progress is not None and (step % self.log_every == 0):
                rate = sums.count / (time.perf_counter() - start)
                progress.update(since_log, sums.mean_loss(), rate)  # mean_loss syncs: only every log_every
                since_log = 0
        result = sums.result(self._reduce)  # syncs once
        seconds = time.perf_counter() - start
        if progress is not None and since_log:
            progress.update(since_log, result.get("loss"), sums.count / max(seconds, 1e-9))
        result["seconds"] = seconds
        result["samples_per_s"] = sums.count / max(seconds, 1e-9)
        if self.grad_scaler is not None:  # steps the GradScaler skipped for inf/NaN gradients
            result["skipped_steps"] = self.grad_scaler.skipped_steps - skipped
        return result

    def evaluate(self, loader, epoch: int = 0) -> dict:
        """Mean loss (and accuracy) over `loader` in eval mode under no_grad."""
        was_training = self.model.training
        self.model.eval()
        sums = _Sums(self.metrics)
        try:
            with no_grad():
                for batch in self._batches(loader, epoch):
                    out, target, loss = self._step_outputs(batch)
                    sums.add(_array(out), target, _array(loss))
        finally:
            self.model.train(was_training)
        return sums.result(self._reduce)

    def _reduce(self, totals):
        """Sums over the ranks (distributed), as they are otherwise."""
        if self.distributed:
            from .distributed import all_reduce
            all_reduce(totals)
        return totals


class _Sums:
    """Running sums of loss x samples and correct predictions, on the device."""

    def __init__(self, metrics):
        self.metrics = metrics
        self.loss = 0.0
        self.correct = 0
        self.count = 0
        self.positions = 0
        self.has_accuracy = "accuracy" in metrics

    def add(self, out, target, loss):
        n = int(target.shape[0]) if target.ndim else 1
        self.loss = self.loss + loss * n  # 0-d device arithmetic: no sync
        self.count += n
        if self.has_accuracy:
            c = _correct(out, target)
            if c is None:
                self.has_accuracy = False  # regression-style targets: accuracy is undefined
            else:
                self.correct = self.correct + c
                self.positions += int(target.size)

    def mean_loss(self) -> float:
        return float(to_numpy(self.loss)) / max(self.count, 1)

    def result(self, reduce=lambda totals: totals) -> dict:
        """Mean loss (and accuracy) from the sums, after `reduce` (the sum over ranks) of
        [loss x samples, samples, correct, positions]; the samples counted are kept in `count`."""
        correct = float(to_numpy(self.correct)) if self.positions else 0.0
        totals = reduce(np.array([float(to_numpy(self.loss)), self.count, correct, self.positions]))
        loss, self.count, correct, positions = totals[0], int(totals[1]), totals[2], int(totals[3])
        out = {"loss": loss / max(self.count, 1)}
        if self.has_accuracy and positions:
            out["accuracy"] = correct / positions
        return out


def evaluate(model, loss_fn, loader, device=None, metrics=METRICS, distributed: bool = False, amp=None) -> dict:
    """{'loss': mean loss, 'accuracy': fraction correct} of `model` over
    `loader`, in eval mode under gpunet.no_grad() (nothing saved for backward).
    distributed: each rank evaluates its loader; the sums are reduced over ranks.
    amp: None, or bfloat16/float16: evaluate under gpunet.amp.autocast."""
    trainer = Trainer(model, loss_fn, optimizer=None, device=device, metrics=metrics, distributed=distributed,
                      amp=amp)
    return trainer.evaluate(loader)


# ---------------------------------------------------------------- fit
def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs: int = 10, device=None,
        metrics=METRICS, early_stopping_patience: int | None = None, checkpoint_path=None, resume: bool = True,
        plot_path=None, scheduler=None, clip_grad_norm: float | None = None, progress: bool = True,
        log_every: int = 50, distributed: bool = False, autograd=None, amp=None, grad_scaler=None) -> History:
    """Train `model` for `epochs` epochs and return its History.

    device: move model and loss there (default: where the model is). Create the
      optimizer before or after; it holds the Parameters, which move with the model.
    metrics: the loss is always recorded; "accuracy" adds the fraction of
      correct class predictions (skipped for non-class targets).
    early_stopping_patience: stop after this many epochs without a lower
      validation loss, then restore the weights of the best epoch (needs val_loader).
    checkpoint_path: after every epoch save model, optimizer, scheduler, history
      and RNG state there (atomically: a crash never leaves half a file);
      with resume=True an existing checkpoint is loaded and training continues.
    plot_path: write learning curves (train/val loss and accuracy per epoch)
      as a PNG; needs matplotlib.
    scheduler: stepped once per epoch; one whose step() takes `metrics`
      (ReduceLROnPlateau) gets the validation loss (training loss without validation).
    clip_grad_norm: clip the global gradient norm before each optimizer step.
    progress: a tqdm bar with live loss and samples/s on a terminal, plain
      lines otherwise; False prints nothing.
    distributed: data-parallel over the ranks of gpunet.distributed (started
      with mpiexec; the process group is initialized if it is not): see the
      module docstring. train_loader must use a DistributedSampler.
    autograd: True runs each step as `loss = loss_fn(model(Tensor(x)), y);
      loss.backward()`; None (default) does so when the model or the loss has no
      explicit backward (a forward written with Tensor operations).
    amp: None, or bfloat16/float16: mixed precision through gpunet.amp.autocast.
    grad_scaler: a gpunet.amp.GradScaler (default for amp=float16: a new one);
      its state is saved in the checkpoint.
    """
    epochs = int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs: expected a non-negative integer, got {epochs}")
    if early_stopping_patience is not None:
        if val_loader is None:
            raise ValueError("early_stopping_patience: needs a val_loader (it watches the validation loss)")
        if isinstance(early_stopping_patience, bool) or int(early_stopping_patience) < 1:
            raise ValueError(f"early_stopping_patience: expected a positive integer or None, "
                             f"got {early_stopping_patience!r}")
    if distributed:
        _check_sharded(train_loader)
    trainer = Trainer(model, loss_fn, optimizer, device, metrics, clip_grad_norm, log_every, distributed, autograd,
                      amp, grad_scaler)
    lead = trainer.rank == 0  # the rank that prints and writes files
    report = _Progress(progress and lead)
    history = History()
    best = {"loss": math.inf, "state": None, "bad_epochs": 0}
    start_epoch = 0
    if checkpoint_path is not None and resume and os.path.exists(checkpoint_path):
        start_epoch = _load_checkpoint(checkpoint_path, trainer, scheduler, history, best)
        report.write(f"resumed from {checkpoint_path} after epoch {start_epoch}")
    if distributed:
        _check_same_start(start_epoch, checkpoint_path)

    for epoch in range(start_epoch, epochs):
        if history.stopped_early:
            break
        report.start_epoch(epoch + 1, epochs, len(train_loader) if hasattr(train_loader, "__len__") else None)
        values = trainer.train_epoch(train_loader, epoch, report)
        if val_loader is not None:
            values.update({f"val_{k}": v for k, v in trainer.evaluate(val_loader, epoch).items()})
        values["lr"] = optimizer.param_groups[0]["lr"]
        history.append(epoch + 1, values)
        _step_scheduler(scheduler, values)

        if val_loader is not None and values["val_loss"] < best["loss"]:
            best.update(loss=values["val_loss"], bad_epochs=0)
            history.best_epoch = epoch + 1
            if early_stopping_patience is not None:
                best["state"] = trainer.model.state_dict()
        elif val_loader is not None:
            best["bad_epochs"] += 1
        if early_stopping_patience is not None and best["bad_epochs"] >= early_stopping_patience:
            history.stopped_early = True

        report.end_epoch(_epoch_line(epoch + 1, epochs, values))
        if checkpoint_path is not None and lead:
            _save_checkpoint(checkpoint_path, epoch + 1, trainer, scheduler, history, best)
        if checkpoint_path is not None and distributed:
            from .distributed import barrier
            barrier()  # the checkpoint is on disk before any rank goes on (or returns)
    if history.stopped_early:
        report.write(f"early stopping: no lower validation loss for {early_stopping_patience} epochs")
    if early_stopping_patience is not None and best["state"] is not None:
        trainer.model.load_state_dict(best["state"])
        report.write(f"restored the weights of epoch {history.best_epoch} (val_loss {best['loss']:.4f})")
    if plot_path is not None and lead:
        plot_history(history, plot_path)
    return history


def _check_sharded(loader):
    from .data import DataLoader
    from .distributed import DistributedSampler
    if isinstance(loader, DataLoader) and not isinstance(loader.sampler, DistributedSampler):
        raise ValueError("train_loader: with distributed=True every rank must read its own share of the data: "
                         "DataLoader(dataset, batch_size, sampler=gpunet.distributed.DistributedSampler(dataset, "
                         "seed=...))")


def _amp_dtype(amp):
    if amp is None:
        return None
    dt = dtypes.resolve(amp, "amp")
    if not dtypes.is_half(dt):
        raise ValueError(f"amp: expected bfloat16, float16 or None, got {dt}")
    return dt


def _check_same_start(start_epoch: int, checkpoint_path):
    """Every rank must resume from the same epoch (the same checkpoint file)."""
    from .distributed import all_gather
    starts = all_gather(np.array([start_epoch], np.int64)).ravel().tolist()
    if len(set(starts)) > 1:
        raise RuntimeError(f"checkpoint_path: the ranks resumed from different epochs {starts} "
                           f"({checkpoint_path!r}): every rank must see the same file (a shared filesystem)")


def _epoch_line(epoch, epochs, values) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if k in values:
            parts.append(f"{k} {values[k]:.4f}")
    parts.append(f"{values['samples_per_s']:,.0f} samples/s")
    parts.append(f"{values['seconds']:.1f}s")
    return "  ".join(parts)


def _step_scheduler(scheduler, values):
    if scheduler is None:
        return
    if "metrics" in inspect.signature(scheduler.step).parameters:
        scheduler.step(values.get("val_loss", values.get("loss")))
    else:
        scheduler.step()


def _save_checkpoint(path, epoch, trainer, scheduler, history, best):
    from .serialization import save
    state = {
        "epoch": epoch,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "history": history.state_dict(),
        "best": {"loss": best["loss"], "bad_epochs": best["bad_epochs"], "state": best["state"]},
        "rng": gpurandom.get_state(),
        "grad_scaler": None if trainer.grad_scaler is None else trainer.grad_scaler.state_dict(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save(state, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _load_checkpoint(path, trainer, scheduler, history, best) -> int:
    from .serialization import load
    state = load(path)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    history.load_state_dict(state["history"])
    best.update(state["best"])
    gpurandom.set_state(state["rng"])
    if trainer.grad_scaler is not None and state.get("grad_scaler"):
        trainer.grad_scaler.load_state_dict(state["grad_scaler"])
    return int(state["epoch"])


def load_checkpoint_weights(model, path):
    """Load only the model weights of a checkpoint written by `fit`."""
    from .serialization import load
    model.load_state_dict(load(path)["model"])
    return model


# ---------------------------------------------------------------- plots
def plot_history(history: History, path):
    """Learning curves as a PNG: loss (train and validation) and, when
    recorded, accuracy, per epoch. Needs matplotlib (Agg backend, no display)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError("plot_path needs matplotlib: pip install matplotlib  "
                          "(or: pip install gpunet[examples])") from e
    panels = [k for k in ("loss", "accuracy") if k in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        ax.plot(history.epochs, history[key], "o-", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(history.epochs, history[f"val_{key}"], "s-", label=f"validation {key}")
        if history.best_epoch is not None:
            ax.axvline(history.best_epoch, color="grey", linestyle=":", label="lowest validation loss")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
