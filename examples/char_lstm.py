"""A character-level LSTM language model.

Part 1 is the lecture notes' example: vocabulary [e, h, l, o], input "hell",
target "ello"; after training, sampling from "h" (each drawn character fed
back as the next input) spells "ello".

Part 2 trains the same architecture on a text file (default: a short story
written for this repository, examples/data/lighthouse.txt) to predict the next
character, holds out the last 10% of the text for validation, and samples.

    python examples/char_lstm.py [--device cpu|sim|cuda|cupy|auto] [--text FILE] [--epochs 20] [--quick]
"""
import argparse
import os
import time

import numpy as np

import gpunet
from gpunet import models, nn, optim
from gpunet.data import CharDataset, DataLoader

DEFAULT_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lighthouse.txt")


def hello(device) -> str:
    ds = CharDataset("hello", seq_len=4)
    model = models.CharLSTM(ds.vocab_size, embed_dim=8, hidden_size=16).to(device)
    gpunet.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), DataLoader(ds, 1),
               epochs=60, progress=False)
    sample = ds.decode(model.sample(ds.encode("h"), 4, temperature=0.01))
    print(f'"hello": vocabulary {ds.vocab}, input "hell" -> target "ello"; after training, sampling from "h" '
          f'gives "h{sample}"')
    return sample


def main(device: str = "auto", quick: bool = False, text: str = DEFAULT_TEXT, epochs: int = 20,
         seq_len: int = 64, hidden: int = 128, batch_size: int = 64, lr: float = 5e-3, seed: int = 0,
         dtype: str = "float32") -> dict:
    device = gpunet.get_backend(device).device
    gpunet.manual_seed(seed)
    sample_hello = hello(device)

    with open(text, encoding="utf-8") as f:
        corpus = f.read()
    if quick:
        corpus, epochs, seq_len, hidden = corpus[:1500], 3, 32, 64
    cut = int(0.9 * len(corpus))
    vocab = sorted(set(corpus))  # shared by both parts, so every character has a code
    train = CharDataset(corpus[:cut], seq_len, vocab=vocab)
    val = CharDataset(corpus[cut:], seq_len, vocab=vocab)
    model = models.CharLSTM(len(vocab), embed_dim=32, hidden_size=hidden).to(device)
    print(f"{os.path.basename(text)}: {len(corpus)} characters, {len(vocab)} distinct; "
          f"CharLSTM with {sum(p.numel() for p in model.parameters()):,} parameters on {device}")
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    amp = gpunet.amp.autocast_dtype(dtype)
    history = gpunet.fit(model, loss_fn, opt, DataLoader(train, batch_size, shuffle=True, seed=seed, device=device),
                         DataLoader(val, 256, device=device), epochs=epochs, clip_grad_norm=1.0,
                         scheduler=optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), amp=amp)
    seconds = time.perf_counter() - start
    counts = np.bincount(val.codes, minlength=len(vocab))
    baseline = counts.max() / counts.sum()  # always guessing the most frequent character
    val_acc = history["val_accuracy"][-1]
    print(f"next-character accuracy on the held-out 10%: {val_acc:.3f} (most-frequent-character baseline "
          f"{baseline:.3f}); training {seconds:.1f}s")
    prompt = corpus[:10]
    generated = train.decode(model.sample(train.encode(prompt), 200 if not quick else 60, temperature=0.7, seed=seed))
    print(f"sample: {prompt}{generated}")
    if quick:
        assert sample_hello == "ello", sample_hello
        assert val_acc > baseline + 0.05, (val_acc, baseline)
    return {"hello": sample_hello, "val_accuracy": val_acc, "baseline": baseline, "seconds": seconds}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="hello + a short run; asserts it beats the baseline")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="a UTF-8 text file to learn")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    gpunet.amp.add_dtype_argument(ap)
    args = ap.parse_args()
    main(args.device, args.quick, args.text, args.epochs, args.seq_len, args.hidden, args.batch_size, args.lr,
         args.seed, args.dtype)
