"""A small transformer learns to sort (or reverse) sequences of digits.

Tokens are embedded, a learned position vector is added, and two pre-norm
blocks follow (multi-head self-attention and a GELU MLP, each inside a
residual connection with LayerNorm), then a per-position Linear head. Every
output position attends to every input position, so position i can find
the i-th smallest digit. Accuracy is per output token on unseen sequences.

    python examples/transformer_sort.py [--device cpu|sim|cuda|cupy|auto] [--task sort|reverse] [--quick]
"""
import argparse
import time

import gpunet
from gpunet import models, nn, optim
from gpunet.data import DataLoader, TensorDataset, digit_sequences


def main(device: str = "auto", quick: bool = False, task: str = "sort", length: int = 8, train_size: int = 8000,
         epochs: int = 6, dim: int = 64, heads: int = 4, layers: int = 2, lr: float = 3e-3, seed: int = 0,
         dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    gpunet.manual_seed(seed)
    if quick:
        length, train_size, epochs, dim = 6, 2000, 4, 32
    x, y = digit_sequences(train_size, length, task=task, seed=seed)
    xt, yt = digit_sequences(2000, length, task=task, seed=seed + 1)  # a different seed: unseen sequences
    model = models.Transformer(vocab_size=10, max_len=length, dim=dim, num_heads=heads, num_layers=layers).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    print(f"transformer ({sum(p.numel() for p in model.parameters()):,} parameters) on {device}: {task} "
          f"{length} digits; {train_size} training sequences")
    amp = gpunet.amp.autocast_dtype(dtype)
    start = time.perf_counter()
    gpunet.fit(model, loss_fn, opt, DataLoader(TensorDataset(x, y), 64, shuffle=True, seed=seed, device=device),
               epochs=epochs, scheduler=optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), amp=amp)
    seconds = time.perf_counter() - start
    test = DataLoader(TensorDataset(xt, yt), 500, device=device)
    result = gpunet.evaluate(model, loss_fn, test, amp=amp)
    with gpunet.no_grad():
        model.eval()
        pred = gpunet.to_numpy(model(gpunet.asarray(xt[:3], device=device))).argmax(axis=1)
    for src, out in zip(xt[:3], pred):
        print(f"  {''.join(map(str, src))} -> {''.join(map(str, out))}")
    print(f"token accuracy on 2000 unseen sequences: {result['accuracy']:.4f} (training {seconds:.1f}s)")
    if quick:
        assert result["accuracy"] >= 0.99, result
    return {"token_accuracy": result["accuracy"], "seconds": seconds}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="shorter sequences, smaller model; asserts >= 99%%")
    ap.add_argument("--task", choices=("sort", "reverse"), default="sort")
    ap.add_argument("--length", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.task, args.length, args.train_size, args.epochs, args.dim, args.heads,
         args.layers, args.lr, args.seed, args.dtype)
