"""models benchmarks: one training step of each pykernels.models architecture against its torch.nn
twin (`Model.with_torch_layers(...)`, the same weights through load_state_dict).

    one step  = optimizer.zero_grad(); loss = cross_entropy(model(x), y); loss.backward();
                SGD(lr 0.01, momentum 0.9).step()       (the DCGAN: one discriminator step on a real
                and a generated batch, then one generator step, BCE-with-logits, one SGD each)
    rate      = samples per second (B / t), in the row's note, pykernels vs torch
    FLOP      = 3 * forward FLOP (the backward is two passes of the forward's size: grad input and
                grad weight), the forward FLOP counted once per model with forward hooks on the
                torch twin, layer by layer:
                  Linear           2 * rows * in * out
                  Conv2d           2 * N * K * OH * OW * (C/g) * R * S
                  ConvTranspose2d  2 * N * C * H * W * (K/g) * R * S     (each input pixel scatters
                                                                         into K/g * R * S outputs)
                  MultiheadAttn    2*B*L*E*E (q proj) + 2*B*S*(kdim + vdim)*E (k, v proj)
                                   + 4*B*L*S*E (q @ k^T and P @ v over all heads) + 2*B*L*E*E (out)
                  LSTM / GRU / RNN 2 * T * B * (I_l + H) * G * H per layer and direction
                                   (G = 4, 3, 1 gates)
                pooling, normalisation, activations, the softmax, the loss and the optimizer step
                are not counted, so GFLOP/s is a lower bound of the arithmetic done; the DCGAN step
                runs the discriminator three times and the generator once: 3 * (G + 3 * D)
    GFLOP/s   = FLOP / t;  % peak = GFLOP/s / FMA peak measured in the same run
                (bench.common.fma_peak_gflops, pykernels' thread count; CPU only)

Models, batches and inputs (random inputs of the data set's shape, labels uniform over the classes):
  mnist     MLP 784-128-10 B64; SeedCNN B32 and B64; SmallCNN B64      x [B, 1, 28, 28], 10 classes
  imagenet  AlexNet B8 and ResNet18 B8 at [B, 3, 224, 224], 1000 classes: AlexNet's own input
            size (at 64x64 its features shrink to 1x1 and the 9216-wide classifier is all that is
            left), ResNet18 at the shapes of bench conv2d's resnet18 group; B8 keeps a step near
            half a second on 2 cores
  cifar     VGG11, VGG16, ResNet18, ResNet50, DenseNet121 (growth 32) at B32 on CIFAR-10-sized
            inputs [B, 3, 32, 32], 10 classes: torchvision's ImageNet layouts unchanged (the 7x7
            stride-2 stems, VGG's AdaptiveAvgPool2d(7) in front of its 25088-wide classifier);
            at 224 a ResNet50 or VGG16 step costs seconds per image here
  seq       RNNClassifier LSTM and GRU on row-wise MNIST (B64, T28, I28, H128);
            TransformerEncoder B16 N128 d256, 4 heads, 4 post-norm layers, feed-forward 1024,
            dropout 0, the mean over tokens -> Linear(256, 10) (token embeddings are the input);
            ViT on MNIST B64 (patch 7, dim 64, depth 4, 4 heads, MLP 128)
  gan       DCGAN generator (nz 100, ngf 64) + discriminator (ndf 64), 28x28, B64
--quick: MLP, SeedCNN B64, SmallCNN, the LSTM classifier, ViT, and ResNet18 on CIFAR at B8; fewer
repeats.
Every model is built after torch.manual_seed(0) and its twin loads its state_dict; each side gets
a fresh optimizer, and both cycle through the same four batches. Dropout (AlexNet and VGG: 0.5)
stays on. Before timing, each model is checked once, in training mode, both sides under the same
RNG seed (so the dropout masks match): the forward outputs (bench.common.assert_close, max error /
max |torch| <= 1e-3 in float32: deep models in training mode round differently by up to 1e-4, see
_FWD_TOL) and every parameter's gradient (a gross-error catch, see _GRAD_TOL; the tight checks are
the float64 parity tests, tests/test_models_*). A model that fails the check is not timed: its
error is printed, the other models go on.

Run:     .venv/bin/python -m pykernels bench models [--quick] [--threads N] [--device cuda]
Profile: .venv/bin/python -m bench.bench_models --profile resnet50 [--steps 3] [--top 20]
         (also python bench/bench_models.py ...; --list names the models): torch.profiler over a
         few training steps of each side, the top ops by self CPU time, and both sides' time per
         step by op kind (conv, gemm, pool, norm, ...) side by side.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # python bench/bench_models.py: make the relative imports work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from .common import (BenchCorrectnessError, assert_close, bench_pair, fma_peak_gflops, make_record,
                     run_cases, setup_run, sync)

OP = "models"
TRAIN = 3.0  # training-step FLOP = 3 * forward FLOP (see the header)
LR, MOMENTUM = 0.01, 0.9
N_BATCHES = 4  # distinct batches each side cycles through
MIN_SAMPLE_MS = 5.0  # steps shorter than this are timed `inner` at a time (see _inner)
NZ = 100  # the DCGAN generator's noise size


# ----------------------------------------------------------------------------------------------
# the models


def _model(module: str, name: str, **kw) -> Callable:
    """build(twin) for pykernels.models.<module>.<name>(**kw): a TorchTwin class (the twin is
    cls.with_torch_layers(**kw)) or a constructor function such as resnet18 (the twin is
    fn(layers=torch.nn, **kw))."""
    def build(twin: bool) -> torch.nn.Module:
        make = getattr(importlib.import_module(f"pykernels.models.{module}"), name)
        if not twin:
            return make(**kw)
        if isinstance(make, type):
            return make.with_torch_layers(**kw)
        return make(layers=torch.nn, **kw)
    return build


class _SeqClassifier(torch.nn.Module):
    """TransformerEncoder over token embeddings [B, N, d], mean over tokens, Linear head."""

    def __init__(self, d, heads, depth, ff, classes, *, layers):
        super().__init__()
        from pykernels.models._base import resolve_layers
        from pykernels.models.transformer import TransformerEncoder, TransformerEncoderLayer

        layer = TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True, layers=layers)
        self.encoder = TransformerEncoder(layer, depth)
        self.head = resolve_layers(layers).Linear(d, classes)

    def forward(self, x):                          # x [B, N, d]
        return self.head(self.encoder(x).mean(1))  # [B, classes]


class _GAN(torch.nn.Module):
    """The DCGAN pair: G (z [B, nz] -> image [B, 1, 28, 28]) and D (image -> logit [B])."""

    def __init__(self, *, layers):
        super().__init__()
        from pykernels.models.dcgan import DCGANDiscriminator, DCGANGenerator

        self.G = DCGANGenerator(nz=NZ, ngf=64, nc=1, image_size=28, layers=layers)
        self.D = DCGANDiscriminator(nc=1, ndf=64, image_size=28, layers=layers)


class Case(NamedTuple):
    key: str                      # the name --profile takes
    group: str                    # table / plot group
    label: str                    # row label: model, batch, one sample's shape
    B: int
    sample: tuple                 # one input sample's shape
    classes: int
    build: Callable[[bool], torch.nn.Module]  # build(twin) -> model (pykernels, or torch.nn twin)
    unit: str = "img"             # what one sample is, for the rate
    gan: bool = False
    quick: bool = False           # in the --quick subset
    full: bool = True             # in the full run


def _cases() -> List[Case]:
    mnist, cifar, imagenet = (1, 28, 28), (3, 32, 32), (3, 224, 224)

    def c(key, group, name, B, sample, classes, build, **kw):
        shape = "x".join(map(str, sample))
        return Case(key, group, f"{name} B{B} {shape}", B, sample, classes, build, **kw)

    return [
        c("mlp", "mnist", "MLP", 64, mnist, 10, _model("mlp", "MLP"), quick=True),
        c("seedcnn-b32", "mnist", "SeedCNN", 32, mnist, 10, _model("cnn", "SeedCNN")),
        c("seedcnn-b64", "mnist", "SeedCNN", 64, mnist, 10, _model("cnn", "SeedCNN"), quick=True),
        c("smallcnn", "mnist", "SmallCNN", 64, mnist, 10, _model("cnn", "SmallCNN"), quick=True),
        c("alexnet", "imagenet", "AlexNet", 8, imagenet, 1000, _model("alexnet", "AlexNet")),
        c("resnet18-224", "imagenet", "ResNet18", 8, imagenet, 1000,
          _model("resnet", "resnet18")),
        c("vgg11", "cifar", "VGG11", 32, cifar, 10, _model("vgg", "vgg11", num_classes=10)),
        c("vgg16", "cifar", "VGG16", 32, cifar, 10, _model("vgg", "vgg16", num_classes=10)),
        c("resnet18-b8", "cifar", "ResNet18", 8, cifar, 10,
          _model("resnet", "resnet18", num_classes=10), quick=True, full=False),
        c("resnet18", "cifar", "ResNet18", 32, cifar, 10,
          _model("resnet", "resnet18", num_classes=10)),
        c("resnet50", "cifar", "ResNet50", 32, cifar, 10,
          _model("resnet", "resnet50", num_classes=10)),
        c("densenet121", "cifar", "DenseNet121", 32, cifar, 10,
          _model("densenet", "densenet121", num_classes=10)),
        c("lstm", "seq", "RNNClassifier LSTM H128", 64, mnist, 10,
          _model("rnn", "RNNClassifier", cell="lstm"), quick=True),
        c("gru", "seq", "RNNClassifier GRU H128", 64, mnist, 10,
          _model("rnn", "RNNClassifier", cell="gru")),
        c("transformer", "seq", "TransformerEncoder L4 h4", 16, (128, 256), 10,
          lambda twin: _SeqClassifier(256, 4, 4, 1024, 10, layers=torch.nn if twin else None),
          unit="seq"),
        c("vit", "seq", "ViT p7 d64 L4", 64, mnist, 10, _model("transformer", "ViT"), quick=True),
        c("dcgan", "gan", "DCGAN G+D", 64, mnist, 2,
          lambda twin: _GAN(layers=torch.nn if twin else None), gan=True),
    ]


def _select(quick: bool) -> List[Case]:
    return [c for c in _cases() if (c.quick if quick else c.full)]


# ----------------------------------------------------------------------------------------------
# FLOP count: forward hooks on the torch twin


def _mha_flops(m: torch.nn.MultiheadAttention, args, kwargs) -> float:
    q = args[0] if len(args) > 0 else kwargs["query"]
    k = args[1] if len(args) > 1 else kwargs["key"]
    E = m.embed_dim
    if q.dim() == 2:  # unbatched [L, E]
        B, L, S = 1, q.shape[0], k.shape[0]
    elif m.batch_first:  # [B, L, E]
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
    else:  # [L, B, E]
        B, L, S = q.shape[1], q.shape[0], k.shape[0]
    proj = 2.0 * B * L * E * E + 2.0 * B * S * (m.kdim + m.vdim) * E + 2.0 * B * L * E * E
    return proj + 4.0 * B * L * S * E  # scores q @ k^T and P @ v, all heads (H * D = E)


def _rnn_flops(m: torch.nn.RNNBase, args) -> float:
    x = args[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"FLOP count: {type(m).__name__} got {type(x).__name__}, not a tensor")
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)  # mode: LSTM, GRU, RNN_TANH, RNN_RELU
    if x.dim() == 2:  # unbatched [T, I]
        T, B = x.shape[0], 1
    else:
        T, B = (x.shape[1], x.shape[0]) if m.batch_first else (x.shape[0], x.shape[1])
    D = 2 if m.bidirectional else 1
    H = m.hidden_size
    total = 0.0
    for layer in range(m.num_layers):
        i = m.input_size if layer == 0 else D * H
        total += D * 2.0 * T * B * (i + H) * gates * H
    return total


def _module_flops(m: torch.nn.Module, args, kwargs, out) -> float:
    """Forward FLOP of one call of a counted layer (the formulas in the header); 0 otherwise."""
    if isinstance(m, torch.nn.Linear):
        x = args[0]
        return 2.0 * (x.numel() // m.in_features) * m.in_features * m.out_features
    if isinstance(m, torch.nn.Conv2d):  # out [N, K, OH, OW] (or [K, OH, OW])
        R, S = m.kernel_size
        return 2.0 * out.numel() * (m.in_channels // m.groups) * R * S
    if isinstance(m, torch.nn.ConvTranspose2d):  # x [N, C, H, W] (or [C, H, W])
        R, S = m.kernel_size
        return 2.0 * args[0].numel() * (m.out_channels // m.groups) * R * S
    if isinstance(m, torch.nn.MultiheadAttention):
        return _mha_flops(m, args, kwargs)
    if isinstance(m, torch.nn.RNNBase):
        return _rnn_flops(m, args)
    if isinstance(m, torch.nn.RNNCellBase):  # x [B, I] (or [I]); gates from the weight's rows
        rows = args[0].numel() // m.input_size
        gates = m.weight_ih.shape[0] // m.hidden_size
        return 2.0 * rows * (m.input_size + m.hidden_size) * gates * m.hidden_size
    return 0.0


def forward_flops(model: torch.nn.Module, fn: Callable[[], object]) -> float:
    """FLOP of the counted layers of `model` during fn() (a forward), in eval mode, without grad."""
    total = [0.0]

    def hook(m, args, kwargs, out):
        total[0] += _module_flops(m, args, kwargs, out)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()]
    was_training = model.training
    model.eval()  # no BatchNorm running-stat update: the twin stays equal to the pykernels model
    try:
        with torch.no_grad():
            fn()
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


# ----------------------------------------------------------------------------------------------
# batches, steps, the one-off check


def _batches(case: Case, device, dtype) -> list:
    """N_BATCHES inputs, from a generator seeded by the case's key (the same for both sides)."""
    gen = torch.Generator().manual_seed(1000 + sum(map(ord, case.key)))
    out = []
    for _ in range(N_BATCHES):
        if case.gan:  # real images in the generator's Tanh range, and the noise z [B, nz]
            x = torch.rand(case.B, *case.sample, generator=gen) * 2 - 1
            y = torch.randn(case.B, NZ, generator=gen)
        else:
            x = torch.randn(case.B, *case.sample, generator=gen)
            y = torch.randint(0, case.classes, (case.B,), generator=gen)
        out.append((x.to(device=device, dtype=dtype),
                    y.to(device=device, dtype=dtype if case.gan else torch.long)))
    return out


def _pair(case: Case, device, dtype):
    """(pykernels model, torch twin) with the same weights, on device, in training mode."""
    torch.manual_seed(0)
    pk = case.build(False).to(device=device, dtype=dtype)
    twin = case.build(True).to(device=device, dtype=dtype)
    twin.load_state_dict(pk.state_dict())
    return pk.train(), twin.train()


def _optimizers(case: Case, model) -> list:
    sgd = lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)  # noqa: E731
    if case.gan:
        return [sgd(model.D.parameters()), sgd(model.G.parameters())]
    return [sgd(model.parameters())]


def _forward_loss(case: Case, model, batch):
    """(outputs the check compares, a scalar loss that reaches every parameter): the logits and
    their cross-entropy; for the GAN the generated images and the real images' logits, and the
    generator's loss plus the discriminator's loss on the real images."""
    x, y = batch
    if case.gan:
        fake, real = model.G(y), model.D(x)
        fake_logits = model.D(fake)
        loss = (F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
                + F.binary_cross_entropy_with_logits(real, torch.ones_like(real)))
        return (fake, real), loss
    logits = model(x)
    return logits, F.cross_entropy(logits, y)


def make_step(case: Case, model, batches) -> Callable[[], None]:
    """One training step per call, cycling through `batches`; a fresh SGD-momentum optimizer."""
    opts = _optimizers(case, model)
    it = itertools.cycle(batches)
    bce = F.binary_cross_entropy_with_logits

    if case.gan:
        opt_d, opt_g = opts
        ones = torch.ones(case.B, device=batches[0][0].device, dtype=batches[0][0].dtype)
        zeros = torch.zeros_like(ones)

        def step():
            real, z = next(it)
            opt_d.zero_grad(set_to_none=True)
            fake = model.G(z)                                                  # [B, 1, 28, 28]
            loss_d = bce(model.D(real), ones) + bce(model.D(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad(set_to_none=True)
            bce(model.D(fake), ones).backward()  # D's gradients here are dropped by the next step
            opt_g.step()
        return step

    (opt,) = opts

    def step():
        x, y = next(it)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


# Gradient check: per parameter p, ||grad_pk - grad_torch|| / max(||grad_torch||, floor_p) with
# floor_p = 1e-2 * sqrt(numel_p) * (RMS of every gradient element of the model), against a loose
# bound: a gross-error catch, a wrong kernel is off by O(1) on the parameters it touches (the tight
# checks are the float64 parity tests, tests/test_models_*). In float32 the twins' gradients differ
# by far more than one rounding: a last-bit difference in the forward flips a few ReLU and max-pool
# decisions and grows through the layers; ResNet50's early BatchNorm weights differ by up to 3e-2
# (in float64 by 2e-13), AlexNet's first conv by 5e-3. A gradient that cancels to almost nothing
# differs by more still (DenseNet121's norm0.weight: norm 2e-5 against the stem conv's 12, 5e-2 in
# float32, 8e-11 in float64); the floor keeps such a parameter from failing the check.
# On CUDA (TF32 matmuls on both sides) and in half precision the bound is looser still.
_GRAD_TOL = {torch.float64: 1e-8, torch.float32: 0.2, torch.float16: 0.5, torch.bfloat16: 0.5}
_GRAD_FLOOR = 1e-2


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32 for the norms; float32 and float64 as they are (a float32 norm
    is accurate enough for a bound of 0.2, and VGG's 130M gradients need no float64 copy)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_grads(label: str, grads_pk, grads_t) -> float:
    """grads_*: [(name, grad or None)] in the same order. Returns the worst error; raises
    BenchCorrectnessError on a mismatch."""
    if [n for n, _ in grads_pk] != [n for n, _ in grads_t]:
        raise BenchCorrectnessError(f"{label}: parameter names differ from the twin's")
    present = [_wide(g) for _, g in grads_t if g is not None]
    count = max(1, sum(g.numel() for g in present))
    rms = math.sqrt(sum(float(g.norm()) ** 2 for g in present) / count)
    worst = 0.0
    for (name, g_pk), (_, g_t) in zip(grads_pk, grads_t):
        what = f"{label} grad {name}"
        if (g_pk is None) != (g_t is None):
            raise BenchCorrectnessError(f"{what}: None on one side only")
        if g_t is None:
            continue
        if g_pk.shape != g_t.shape or g_pk.dtype != g_t.dtype or not torch.isfinite(g_pk).all():
            raise BenchCorrectnessError(f"{what}: {tuple(g_pk.shape)} {g_pk.dtype} (torch "
                                        f"{tuple(g_t.shape)} {g_t.dtype}) or non-finite values")
        tol = 0.5 if (g_t.is_cuda and g_t.dtype == torch.float32) else _GRAD_TOL.get(g_t.dtype, 0.2)
        scale = max(float(_wide(g_t).norm()), _GRAD_FLOOR * math.sqrt(g_t.numel()) * rms) or 1.0
        err = float((_wide(g_pk) - _wide(g_t)).norm()) / scale
        worst = max(worst, err)
        if not err <= tol:
            raise BenchCorrectnessError(f"{what}: ||pk - torch|| / max(||torch||, floor) = "
                                        f"{err:.3g} > tol {tol:.1g}")
    return worst


# Forward check bound (bench.common.assert_close's max|pk - torch| / max|torch|): ten times its
# per-dtype default, because rounding grows with depth: ResNet50 in training mode (BatchNorm's
# statistics over 32 samples at 1x1 in its last stage) differs from its twin by ~9e-5 in float32
# and ~1e-13 in float64, ~900 units of rounding, where the small models differ by ~5e-7.
_FWD_TOL = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 0.1, torch.bfloat16: 0.3}


def check(case: Case, pk, twin, batch) -> float:
    """The forward outputs and every parameter gradient of pk against the twin's, in training mode
    under the same RNG seed (dropout masks match). Returns the worst forward and gradient errors;
    raises BenchCorrectnessError on a mismatch. Leaves no gradients behind."""
    outs, grads = [], []
    for model in (pk, twin):
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        out, loss = _forward_loss(case, model, batch)
        loss.backward()
        outs.append(out)
        grads.append([(n, p.grad) for n, p in model.named_parameters()])
        model.zero_grad(set_to_none=True)
    ref = outs[1][0] if case.gan else outs[1]
    tol = 0.1 if (ref.is_cuda and ref.dtype == torch.float32) else _FWD_TOL.get(ref.dtype, 1e-3)
    err = assert_close(outs[0], outs[1], tol=tol, what=f"{case.label} forward")
    return err, _check_grads(case.label, *grads)


def _inner(step_pk, step_t, device) -> int:
    """Steps per timed sample: enough that one sample takes >= MIN_SAMPLE_MS (the MLP's step is
    well under a millisecond)."""
    ms = []
    for step in (step_pk, step_t):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        ms.append((time.perf_counter() - t0) * 1e3)
    return max(1, math.ceil(MIN_SAMPLE_MS / max(min(ms), 1e-3)))


# ----------------------------------------------------------------------------------------------
# the benchmark


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        progress: bool = True, keys: Optional[List[str]] = None) -> List:
    """Time one training step of every model (or of `keys`); returns the records.

    A model whose module is missing or whose check fails is reported on stderr and skipped."""
    device, on_cpu, _, budget, threads = setup_run(device, quick)
    peak = fma_peak_gflops(threads, "float64" if dtype == torch.float64 else "float32") \
        if on_cpu else None
    cases = [_case(k) for k in keys] if keys else _select(quick)
    failed: Dict[str, str] = {}

    def bench(case: Case) -> Callable[[], list]:
        def go() -> list:
            try:
                pk, twin = _pair(case, device, dtype)
                batches = _batches(case, device, dtype)
                err, grad_err = check(case, pk, twin, batches[0])
            except Exception as e:  # a missing or wrong model: say so, time the others
                failed[case.key] = f"{type(e).__name__}: {e}"
                print(f"\nbench models: {case.label}: not timed: {failed[case.key]}",
                      file=sys.stderr)
                return []
            if case.gan:  # one step: D on real, G, D on fake twice (see the header)
                x, z = batches[0]
                flops = TRAIN * (forward_flops(twin.G, lambda: twin.G(z))
                                 + 3 * forward_flops(twin.D, lambda: twin.D(x)))
            else:
                flops = TRAIN * forward_flops(twin, lambda: twin(batches[0][0]))
            step_pk, step_t = make_step(case, pk, batches), make_step(case, twin, batches)
            inner = _inner(step_pk, step_t, device)  # also the first (allocating) step of each
            t = bench_pair(step_pk, step_t, warmup=1, device=device, check=False,
                           inner=inner, budget_s=budget, min_reps=3 if quick else 5,
                           max_reps=100)
            rate_pk = case.B / (t.pk.median * 1e-3)
            rate_t = case.B / (t.torch.median * 1e-3)
            return [make_record(
                OP, case.label, dtype, t, flops=flops, peak_gflops=peak, group=case.group,
                device=device, threads=threads,
                note=f"{rate_pk:.0f} vs {rate_t:.0f} {case.unit}/s; "
                     f"err fwd {err:.0e} grad {grad_err:.0e}")]
        return go

    records = run_cases(OP, [(c.label, bench(c)) for c in cases], progress)
    if failed:
        print(f"bench models: not timed: {', '.join(failed)} (see above)", file=sys.stderr)
    return records


def _case(key: str) -> Case:
    by_key = {c.key: c for c in _cases()}
    if key not in by_key:
        raise KeyError(f"no model {key!r}; models: {', '.join(by_key)}")
    return by_key[key]


# ----------------------------------------------------------------------------------------------
# per-op profile of one model


# Op kinds by substring of a profiler event's name (lower case), first match wins. An event is
# counted under the optimizer when it runs inside Optimizer.step / zero_grad; otherwise under its
# own kind, or when its name says little (a copy, an add) under its nearest enclosing event's kind:
# the aten::add_ inside autograd's AccumulateGrad is "grad accumulate", the aten::mm inside
# _LinearEagerBackward is "gemm".
_KINDS = (
    ("loss", ("cross_entropy", "nll_loss", "log_softmax", "binary_cross_entropy")),
    ("conv", ("conv",)),
    ("pool", ("pool",)),
    ("attention", ("attention", "softmax", "bmm")),
    ("rnn", ("lstm", "gru", "rnn")),
    ("gemm", ("linear", "addmm", "aten::mm", "matmul", "gemm")),
    ("norm", ("batch_norm", "layer_norm")),
    ("activation", ("relu", "threshold", "clamp_min", "tanh", "sigmoid", "gelu", "leaky")),
    ("grad accumulate", ("accumulategrad",)),
)
_WEAK_KINDS = (
    ("copy/alloc", ("copy", "empty", "zero", "fill", "contiguous", "cat", "clone", "stack")),
    ("elementwise", ("add", "mul", "sub", "div", "mean", "sum")),
)


def _match(name: str, table) -> Optional[str]:
    low = name.lower()
    return next((kind for kind, keys in table if any(k in low for k in keys)), None)


def _event_kind(event) -> str:
    """The op kind a profiler FunctionEvent's self time is counted under (see _KINDS)."""
    chain = []
    while event is not None:
        chain.append(event.name)
        event = event.cpu_parent
    if any(n.startswith("Optimizer.") for n in chain):
        return "optimizer"
    for table in (_KINDS, _WEAK_KINDS):
        for name in chain:
            kind = _match(name, table)
            if kind:
                return kind
    return "other"


def profile(key: str, *, quick: bool = False, device: str = "cpu",
            dtype: torch.dtype = torch.float32, steps: int = 3, top: int = 20, file=None) -> dict:
    """torch.profiler over `steps` training steps of the pykernels model and of its twin.

    Prints, per side, the `top` ops by self CPU time, then both sides' milliseconds per step by op
    kind (the event name's kind, _KINDS). Returns {side: {kind: ms per step}}."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    file = file if file is not None else sys.stdout
    device, on_cpu, _, _, threads = setup_run(device, quick)
    case = _case(key)
    pk, twin = _pair(case, device, dtype)
    batches = _batches(case, device, dtype)
    check(case, pk, twin, batches[0])
    activities = [ProfilerActivity.CPU] + ([] if on_cpu else [ProfilerActivity.CUDA])
    by_kind: Dict[str, Dict[str, float]] = {}
    for side, model in (("pykernels", pk), ("torch", twin)):
        step = make_step(case, model, batches)
        for _ in range(2):  # warm up: allocations, thread pools
            step()
        sync(device)
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            sync(device)
        events = prof.key_averages()
        print(f"\n== {case.label}, {side}, {steps} training steps, {threads or '-'} threads: "
              f"top {top} ops by self CPU time", file=file)
        print(events.table(sort_by="self_cpu_time_total", row_limit=top), file=file)
        kinds: Dict[str, float] = {}
        for e in prof.events():
            kind = _event_kind(e)
            kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total / 1e3 / steps
        by_kind[side] = kinds
    names = sorted(set(by_kind["pykernels"]) | set(by_kind["torch"]),
                   key=lambda k: -max(by_kind["pykernels"].get(k, 0), by_kind["torch"].get(k, 0)))
    print(f"\n== {case.label}: self CPU ms per training step by op kind (under the profiler, which "
          f"adds its own overhead; kinds from the event names, see bench_models._KINDS)", file=file)
    print(f"{'kind':<16} {'pykernels':>10} {'torch':>10}", file=file)
    for k in names + ["total"]:
        vals = [sum(by_kind[s].values()) if k == "total" else by_kind[s].get(k, 0.0)
                for s in ("pykernels", "torch")]
        print(f"{k:<16} {vals[0]:>10.2f} {vals[1]:>10.2f}", file=file)
    return by_kind


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_models",
        description="Per-op profile of one model's training step (pykernels vs its torch.nn twin); "
                    "the benchmark itself runs with: python -m pykernels bench models")
    p.add_argument("--profile", metavar="MODEL", help="model to profile (see --list)")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--steps", type=int, default=3, help="profiled steps per side (default 3)")
    p.add_argument("--top", type=int, default=20, help="ops shown per side (default 20)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, metavar="N", help="threads for pykernels and torch")
    args = p.parse_args(argv)
    if args.list or not args.profile:
        for c in _cases():
            tags = {(True, True): "", (True, False): " (--quick only)",
                    (False, True): " (full run only)"}[(c.quick, c.full)]
            print(f"{c.key:<14} {c.group:<9} {c.label}{tags}")
        return 0
    if args.threads:
        import pykernels

        pykernels.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    try:
        profile(args.profile, device=args.device, steps=args.steps, top=args.top)
    except KeyError as e:
        print(f"bench_models: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
