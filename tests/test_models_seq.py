"""Sequence, transformer and GAN models on pykernels layers, and pykernels.nn.RNN.

    pykernels.nn.RNN                 vs torch.nn.RNN (after load_state_dict)
    RNNClassifier (rnn / lstm / gru) vs its with_torch_layers twin
    TransformerEncoderLayer / TransformerEncoder
                                     vs torch.nn.TransformerEncoderLayer / TransformerEncoder
                                     themselves, and vs the with_torch_layers twin
    ViT, DCGANGenerator, DCGANDiscriminator
                                     vs their with_torch_layers twins

Every comparison is tests/helpers.assert_twin_parity: the pykernels model's state_dict loaded
(strictly: same keys and shapes) into the other, outputs, every parameter gradient, the inputs'
gradients and every buffer (batch-norm running statistics) within TWIN_TOLERANCES (relative:
float64 1e-9, float32 2e-3), in train and eval mode, float64 and float32. Parameters that
torch initialises to constants (biases 0, norm weights 1) are perturbed first, so a swapped
norm1 / norm2 or a dropped bias cannot pass by accident.

Dropout: torch.nn.Dropout and the recurrent layers' inter-layer dropout draw the same masks in
both builds (same seed), so those are compared with dropout > 0 in train mode; pykernels'
fused attention dropout draws from its own stream, so attention models are compared with
dropout = 0 in train mode (and dropout > 0 in eval mode, where it is off).

Also: each pykernels build really runs pykernels ops forward and backward (and the twin none),
constructor argument checks, output shapes.

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/test_models_seq.py -p no:logging
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import pykernels.nn as pkn
from pykernels.models.dcgan import DCGANDiscriminator, DCGANGenerator
from pykernels.models.rnn import RNNClassifier
from pykernels.models.transformer import TransformerEncoder, TransformerEncoderLayer, ViT
from helpers import RecordPykernelsCalls, assert_twin_parity, make_tensor

F32, F64 = torch.float32, torch.float64
DTYPES = [pytest.param(F64, id="f64"), pytest.param(F32, id="f32")]
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]


def _build(seed, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the default generator seeded (reproducible initial weights),
    without disturbing the global RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _perturb(model, gen):
    """Adds N(0, 0.1^2) noise to every 1-D parameter (biases, norm weights), which torch
    initialises to constants: with all-zero biases or unit norm weights a dropped bias or a
    swapped norm would go unnoticed."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(make_tensor(p.shape, p.dtype, gen, scale=0.1))
    return model


def _ids(cases):
    return ["-".join(f"{k}={v}" for k, v in c.items()) or "default" for c in cases]


# ---- pykernels.nn.RNN vs torch.nn.RNN ------------------------------------------------------------
RNN_CASES = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(nonlinearity="relu", num_layers=2),
    dict(nonlinearity="relu", bias=False, bidirectional=True),
    dict(bias=False, batch_first=True),
]


def _rnn_pair(seed, gen, dtype, I, H, **kw):
    pk = _perturb(_build(seed, pkn.RNN, I, H, dtype=dtype, **kw), gen)
    return pk, torch.nn.RNN(I, H, dtype=dtype, **kw)


@pytest.mark.parametrize("kw", RNN_CASES, ids=_ids(RNN_CASES))
@pytest.mark.parametrize("h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_layer_matches_torch(kw, h0, dtype, gen, seed):
    T, B, I, H = 5, 3, 4, 7
    pk, ref = _rnn_pair(seed, gen, dtype, I, H, **kw)
    D = 2 if kw.get("bidirectional") else 1
    x = make_tensor((B, T, I) if kw.get("batch_first") else (T, B, I), dtype, gen, requires_grad=True)
    inputs = [x]
    if h0:
        inputs.append(make_tensor((kw.get("num_layers", 1) * D, B, H), dtype, gen, scale=0.5, requires_grad=True))
    assert_twin_parity(pk, ref, inputs, train=True)   # outputs (output, h_n), grads of x, h0, every weight


@pytest.mark.parametrize("train", MODES)
def test_rnn_layer_dropout_matches_torch(train, gen, seed):
    """Inter-layer dropout: F.dropout on each layer's output, the masks torch's CPU kernels draw."""
    pk, ref = _rnn_pair(seed, gen, F64, 4, 6, num_layers=3, dropout=0.4, bidirectional=True)
    x = make_tensor((6, 2, 4), F64, gen, requires_grad=True)
    assert_twin_parity(pk, ref, [x], train=train)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_layer_unbatched_matches_torch(dtype, gen, seed):
    pk, ref = _rnn_pair(seed, gen, dtype, 3, 5, num_layers=2, bidirectional=True, nonlinearity="relu")
    x = make_tensor((6, 3), dtype, gen, requires_grad=True)                  # [T, I]
    h0 = make_tensor((4, 5), dtype, gen, scale=0.5, requires_grad=True)      # [L*D, H]
    assert_twin_parity(pk, ref, [x, h0])


class _Packed(torch.nn.Module):
    """rnn on pack_padded_sequence(x, lengths, enforce_sorted=False), output padded again."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths, h0):
        out, hn = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
        return pad_packed_sequence(out)[0], hn


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_layer_packed_sequence_matches_torch(dtype, gen, seed):
    """Rows past their length keep their state (h_n is each sequence's own last step, the
    reverse direction starts there) and output 0; unsorted lengths: hx / h_n permuted."""
    pk, ref = _rnn_pair(seed, gen, dtype, 4, 5, num_layers=2, bidirectional=True)
    x = make_tensor((7, 4, 4), dtype, gen, requires_grad=True)              # [T, B, I]
    lengths = torch.tensor([3, 7, 1, 5])
    h0 = make_tensor((4, 4, 5), dtype, gen, scale=0.5, requires_grad=True)
    assert_twin_parity(_Packed(pk), _Packed(ref), [x, lengths, h0])


def test_rnn_layer_exported():
    assert "RNN" in pkn.__all__ and issubclass(pkn.RNN, torch.nn.RNN)


def test_rnn_layer_unsupported_arguments():
    with pytest.raises(NotImplementedError, match="proj_size"):
        pkn.RNN(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="nonlinearity"):   # torch's own check
        pkn.RNN(3, 4, nonlinearity="sigmoid")
    rnn = pkn.RNN(3, 4, num_layers=2)
    with pytest.raises(RuntimeError, match="hx should also be 3-D"):
        rnn(torch.randn(5, 2, 3), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        rnn(torch.randn(5, 2, 3), torch.randn(1, 2, 4))


# ---- RNNClassifier -----------------------------------------------------------------------------
# float64: one and two directions; float32: two directions only (the reverse direction comes on
# top of the forward one), to save time
CLASSIFIER_CASES = [pytest.param(dtype, bi, id=f"{str(dtype)[6:]}-{'bi' if bi else 'uni'}")
                    for dtype in (F64, F32) for bi in (False, True) if bi or dtype == F64]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("dtype, bidirectional", CLASSIFIER_CASES)
def test_rnn_classifier_matches_twin(cell, bidirectional, train, dtype, gen, seed):
    kw = dict(input_size=6, hidden_size=5, num_classes=4, cell=cell, num_layers=2, bidirectional=bidirectional,
              dropout=0.3, dtype=dtype)
    model = _perturb(_build(seed, RNNClassifier, **kw), gen)
    twin = RNNClassifier.with_torch_layers(**kw)
    # the image form [B, 1, T, I] for one direction, the sequence form [B, T, I] for two
    x = make_tensor((3, 1, 7, 6) if not bidirectional else (3, 7, 6), dtype, gen, requires_grad=True)
    assert_twin_parity(model, twin, [x], train=train)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnn_classifier_shapes(cell, gen):
    model = RNNClassifier(hidden_size=16, cell=cell, bidirectional=True)           # input_size 28
    assert model(make_tensor((2, 1, 28, 28), F32, gen)).shape == (2, 10)           # MNIST rows
    assert model(make_tensor((3, 9, 28), F32, gen)).shape == (3, 10)               # [B, T, I]
    with pytest.raises(ValueError, match="x"):
        model(make_tensor((2, 3, 28, 28), F32, gen))


# ---- TransformerEncoderLayer / TransformerEncoder vs torch's own ---------------------------------
# torch's TransformerEncoderLayer has an inference fast path (torch._transformer_encoder_layer_fwd)
# taken in eval mode with batch_first when grad is off or nothing requires grad; assert_twin_parity
# runs with grad enabled and parameters that require grad, so both take torch's plain path (the
# same Python code as ours, on torch.nn / pykernels layers). test_encoder_layer_vs_torch_fast_path
# checks the fast path separately: observed to be taken there, and to agree with us to rounding
# (~1e-16 in float64, ~4e-7 in float32).
MASKS = ["none", "padding", "causal", "both"]
D_MODEL, NHEAD, FF = 8, 2, 12


def _masks(kind, B, S, dtype):
    """(src_mask, src_key_padding_mask, is_causal) for a [B, S] batch. padding: bool, True =
    padded, no row fully padded; causal: torch's float -inf mask with is_causal=True; both: a
    bool causal mask and the padding mask (is_causal=False: torch then uses the masks as given)."""
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, S - 2:] = True
    kpm[1, S - 1:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(S, dtype=dtype)
    return {"none": (None, None, False), "padding": (None, kpm, False), "causal": (causal, None, True),
            "both": (torch.ones(S, S, dtype=torch.bool).triu(1), kpm, False)}[kind]


def _layer_kwargs(norm_first, activation, batch_first, dropout, dtype):
    return dict(d_model=D_MODEL, nhead=NHEAD, dim_feedforward=FF, dropout=dropout, activation=activation,
                batch_first=batch_first, norm_first=norm_first, dtype=dtype)


def _src(batch_first, B, S, dtype, gen):
    return make_tensor((B, S, D_MODEL) if batch_first else (S, B, D_MODEL), dtype, gen, requires_grad=True)


def _case_id(c):
    return "-".join([str(c["dtype"]).replace("torch.", ""), "train" if c["train"] else "eval",
                     "prenorm" if c["norm_first"] else "postnorm", c["activation"],
                     "batchfirst" if c["batch_first"] else "seqfirst", c["mask"]])


# Not the full product (2^4 x 4 masks x 2 dtypes: too slow here) but a balanced fraction of it:
# in float64 every (norm_first, activation, batch_first, train) combination once, the mask
# picked so that each mask meets both norm orders, both activations, both layouts and both
# modes; float32 on four of them (the padding and the causal mask, each in both modes).
LAYER_CASES = [dict(norm_first=nf, activation=("relu", "gelu")[act], batch_first=bf, train=train, dtype=F64,
                    mask=MASKS[2 * (bf ^ nf) + (act ^ train)])
               for nf in (0, 1) for act in (0, 1) for bf in (0, 1) for train in (0, 1)]
LAYER_CASES += [dict(c, dtype=F32) for c in LAYER_CASES if c["mask"] in ("padding", "causal")
                and c["train"] == c["norm_first"]]
# the encoder: every (norm_first, batch_first, train) once in float64, each mask twice
ENCODER_CASES = [dict(norm_first=nf, activation=("relu", "gelu")[nf], batch_first=bf, train=train, dtype=F64,
                      mask=MASKS[(nf ^ train) + 2 * (bf ^ train)])
                 for nf in (0, 1) for bf in (0, 1) for train in (0, 1)]
ENCODER_CASES += [dict(c, dtype=F32) for c in ENCODER_CASES if c["batch_first"] != c["norm_first"] and c["train"]]


@pytest.mark.parametrize("case", LAYER_CASES, ids=[_case_id(c) for c in LAYER_CASES])
def test_encoder_layer_matches_torch(case, gen, seed):
    dtype, train = case["dtype"], bool(case["train"])
    # dropout 0 in train mode (pykernels' fused attention dropout draws its own masks); eval
    # mode with dropout 0.2 checks that it is off there
    kw = _layer_kwargs(bool(case["norm_first"]), case["activation"], bool(case["batch_first"]),
                       0.0 if train else 0.2, dtype)
    ours = _perturb(_build(seed, TransformerEncoderLayer, **kw), gen)
    theirs = torch.nn.TransformerEncoderLayer(**kw)
    B, S = 3, 5
    src_mask, kpm, is_causal = _masks(case["mask"], B, S, dtype)
    assert_twin_parity(ours, theirs, [_src(kw["batch_first"], B, S, dtype, gen), src_mask, kpm, is_causal],
                       train=train)


@pytest.mark.parametrize("case", ENCODER_CASES, ids=[_case_id(c) for c in ENCODER_CASES])
def test_encoder_matches_torch(case, gen, seed):
    dtype, train, norm_first = case["dtype"], bool(case["train"]), bool(case["norm_first"])
    kw = _layer_kwargs(norm_first, case["activation"], bool(case["batch_first"]), 0.0 if train else 0.2, dtype)
    norm = torch.nn.LayerNorm(D_MODEL, dtype=dtype) if norm_first else None
    ours = _perturb(_build(seed, lambda: TransformerEncoder(TransformerEncoderLayer(**kw), 2, norm)), gen)
    # enable_nested_tensor=False: with True (torch's default), in eval mode under no_grad with a
    # padding mask, torch packs the batch into a nested tensor, runs the fast path, and pads the
    # result with zeros, so padded positions come out 0 where a plain encoder (ours, or torch's
    # own slow path) computes them; it also warns for pre-norm or seq-first layers. The
    # comparison runs with grad on, where torch would not nest anyway; False states the intent.
    theirs = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(**kw), 2,
                                         torch.nn.LayerNorm(D_MODEL, dtype=dtype) if norm_first else None,
                                         enable_nested_tensor=False)
    B, S = 3, 5
    src_mask, kpm, _ = _masks(case["mask"], B, S, dtype)
    # is_causal=None: both detect the causal mask themselves
    assert_twin_parity(ours, theirs, [_src(kw["batch_first"], B, S, dtype, gen), src_mask, kpm, None],
                       train=train)


def test_encoder_layer_vs_torch_fast_path(gen, seed, monkeypatch):
    """Eval mode, no_grad, batch_first: torch takes torch._transformer_encoder_layer_fwd; ours
    (the plain path on pykernels ops) computes the same function."""
    calls = []
    fast = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: calls.append(1) or fast(*a, **k))
    for norm_first in (False, True):
        kw = _layer_kwargs(norm_first, "gelu", True, 0.1, F64)
        ours = _perturb(_build(seed, TransformerEncoderLayer, **kw), gen).eval()
        theirs = torch.nn.TransformerEncoderLayer(**kw).eval()
        theirs.load_state_dict(ours.state_dict())
        src_mask, kpm, _ = _masks("padding", 3, 5, F64)
        x = make_tensor((3, 5, D_MODEL), F64, gen)
        with torch.no_grad():
            n = len(calls)
            expected = theirs(x, src_key_padding_mask=kpm)
            assert len(calls) == n + 1, "torch's fast path was not taken"
            got = ours(x, src_key_padding_mask=kpm)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_encoder_layer_matches_twin(train, dtype, gen, seed):
    kw = _layer_kwargs(True, "gelu", False, 0.0 if train else 0.2, dtype)
    ours = _perturb(_build(seed, TransformerEncoderLayer, **kw), gen)
    src_mask, kpm, _ = _masks("padding", 2, 4, dtype)
    assert_twin_parity(ours, TransformerEncoderLayer.with_torch_layers(**kw),
                       [_src(False, 2, 4, dtype, gen), src_mask, kpm], train=train)


# ---- ViT ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vit_matches_twin(train, dtype, gen, seed):
    kw = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=12,
              dropout=0.0 if train else 0.2, dtype=dtype)
    model = _perturb(_build(seed, ViT, **kw), gen)
    x = make_tensor((2, 2, 8, 8), dtype, gen, requires_grad=True)
    assert_twin_parity(model, ViT.with_torch_layers(**kw), [x], train=train)


def test_vit_shapes(gen):
    model = ViT(depth=1)                                                    # 28x28, 7x7 patches: 16 + 1 tokens
    assert model(make_tensor((2, 1, 28, 28), F32, gen)).shape == (2, 10)
    with pytest.raises(ValueError, match="x"):
        model(make_tensor((2, 1, 32, 32), F32, gen))


# ---- DCGAN ---------------------------------------------------------------------------------------
NZ, NGF, NDF = 6, 4, 4


@pytest.mark.parametrize("image_size", [28, 64])
@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dcgan_generator_matches_twin(image_size, train, dtype, gen, seed):
    kw = dict(nz=NZ, ngf=NGF, nc=2, image_size=image_size, dtype=dtype)
    model = _perturb(_build(seed, DCGANGenerator, **kw), gen)
    z = make_tensor((2, NZ), dtype, gen, requires_grad=True)
    assert_twin_parity(model, DCGANGenerator.with_torch_layers(**kw), [z], train=train)
    out = model(z)
    assert out.shape == (2, 2, image_size, image_size)
    assert out.abs().max() <= 1.0
    assert model(z[:, :, None, None]).shape == out.shape                     # z [B, nz, 1, 1]


@pytest.mark.parametrize("image_size", [28, 64])
@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dcgan_discriminator_matches_twin(image_size, train, dtype, gen, seed):
    kw = dict(nc=2, ndf=NDF, image_size=image_size, dtype=dtype)
    model = _perturb(_build(seed, DCGANDiscriminator, **kw), gen)
    x = make_tensor((2, 2, image_size, image_size), dtype, gen, requires_grad=True)
    assert_twin_parity(model, DCGANDiscriminator.with_torch_layers(**kw), [x], train=train)
    assert model(x).shape == (2,)


def test_dcgan_32(gen):
    g, d = DCGANGenerator(nz=NZ, ngf=NGF, image_size=32), DCGANDiscriminator(ndf=NDF, image_size=32)
    img = g(make_tensor((2, NZ), F32, gen))
    assert img.shape == (2, 1, 32, 32) and d(img).shape == (2,)


# ---- the pykernels build runs pykernels ops, the twin none ------------------------------------------
def _record(model, inputs):
    rec = RecordPykernelsCalls()
    with rec:
        out = model(*inputs)
        out.sum().backward()
    return {func._name.split("::")[1].split(".")[0] for func, _, _ in rec.calls}


def _fwd_bwd(*names):
    return set(names) | {n + "_backward" for n in names}


RECORD_CASES = [
    ("rnn", lambda kw: RNNClassifier(4, 3, 2, "rnn", **kw), (2, 3, 4), _fwd_bwd("linear")),
    ("lstm", lambda kw: RNNClassifier(4, 3, 2, "lstm", **kw), (2, 3, 4), _fwd_bwd("lstm", "linear")),
    ("gru", lambda kw: RNNClassifier(4, 3, 2, "gru", **kw), (2, 3, 4), _fwd_bwd("gru", "linear")),
    ("encoder", lambda kw: TransformerEncoder(TransformerEncoderLayer(8, 2, 12, 0.0, **kw), 2), (5, 2, 8),
     _fwd_bwd("linear", "attention")),
    ("vit", lambda kw: ViT(8, 4, 1, 3, 8, 1, 2, 12, **kw), (2, 1, 8, 8),
     _fwd_bwd("conv2d", "linear", "attention")),
    ("generator", lambda kw: DCGANGenerator(NZ, NGF, 1, 28, **kw), (2, NZ), _fwd_bwd("conv_transpose2d")),
    ("discriminator", lambda kw: DCGANDiscriminator(1, NDF, 28, **kw), (2, 1, 28, 28), _fwd_bwd("conv2d")),
]


@pytest.mark.parametrize("make, shape, expected", [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES])
def test_pykernels_build_runs_pykernels_ops(make, shape, expected, gen):
    x = make_tensor(shape, F32, gen, requires_grad=True)
    seen = _record(make({}), [x])
    assert expected <= seen, f"missing pykernels ops {sorted(expected - seen)}; seen {sorted(seen)}"
    assert not _record(make(dict(layers=torch.nn)), [x]), "the torch.nn twin ran pykernels ops"


# ---- constructor checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("make, name", [
    (lambda: RNNClassifier(cell="lstmcell"), "cell"),
    (lambda: TransformerEncoderLayer(10, 3), "d_model"),
    (lambda: TransformerEncoderLayer(8, 2, activation="tanh"), "activation"),
    (lambda: ViT(dim=10, heads=4), "dim"),
    (lambda: ViT(image_size=30, patch_size=7), "image_size"),
    (lambda: DCGANGenerator(image_size=48), "image_size"),
    (lambda: DCGANDiscriminator(image_size=16), "image_size"),
], ids=["cell", "d_model", "activation", "vit-dim", "vit-image_size", "generator-image_size",
        "discriminator-image_size"])
def test_constructor_rejects_bad_arguments(make, name):
    with pytest.raises(ValueError, match=name):
        make()
