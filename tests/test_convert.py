"""pykernels.convert on models nobody here wrote.

    torch.nn.TransformerEncoderLayer (batch_first and norm_first both ways), torch.nn.Transformer,
    torch.nn.TransformerEncoder (its nested-tensor inference path), a model of nested
    Sequential / ModuleDict / ModuleList holding every supported kind, and the classic PyTorch
    MNIST example CNN (functional pools and dropout) as a user would have written it.

Parity: a deepcopy is converted and compared with the original by tests/helpers.assert_twin_parity
(outputs, every parameter gradient, input gradients, buffers; TWIN_TOLERANCES: float64 1e-9,
float32 2e-3 relative), float64 and float32, train and eval mode. Dropout: torch.nn.Dropout /
Dropout2d / F.dropout and the recurrent layers' inter-layer dropout draw the same masks in both
(same seed), so they stay on; pykernels' fused attention dropout draws from its own stream, so
every MultiheadAttention gets dropout 0 (the feed-forward dropouts of the transformer layers
stay at 0.1).

Also: each converted layer has the pykernels type and really runs pykernels ops (per layer,
through hooks); the Parameter objects are the same (an optimizer made before convert steps
the converted model); hooks fire; training flags, device (meta) and dtype kept; what convert
leaves alone (a user subclass, parametrized / hook-weight-normed / lazy layers, LSTM
proj_size) stays unchanged and is listed in ONE UserWarning; strict=True raises and changes
nothing; layers= restricts; bad layers= values raise; idempotent; the root converts; the
encoder-layer inference fast path does not bypass the converted layers.

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/test_convert.py -p no:logging
"""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch.utils._python_dispatch import TorchDispatchMode

import pykernels
import pykernels.nn as pkn
from pykernels import convert
from helpers import RecordPykernelsCalls, assert_twin_parity, make_tensor

F32, F64 = torch.float32, torch.float64
DTYPES = [pytest.param(F64, id="f64"), pytest.param(F32, id="f32")]
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
KINDS = ["Linear", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
         "AdaptiveMaxPool2d", "MultiheadAttention", "LSTM", "LSTMCell", "GRU", "GRUCell", "RNN"]


# ---- the models (written as their users would) ----------------------------------------------------
class MnistNet(nn.Module):
    """The classic PyTorch MNIST example network."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class Zoo(nn.Module):
    """Every supported kind, nested in Sequential / ModuleDict / ModuleList.
    img [B, 3, 12, 12], seq [B, T, 8] -> [B, 3]."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),                   # [B, 6, 6, 6]
            nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1, padding_mode="reflect"),  # [B, 8, 3, 3]
                          nn.AvgPool2d(2, ceil_mode=True)),                             # [B, 8, 2, 2]
            nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1),         # [B, 4, 4, 4]
            nn.AdaptiveAvgPool2d((2, 3)))                                               # [B, 4, 2, 3]
        self.heads = nn.ModuleDict({"max": nn.AdaptiveMaxPool2d(1), "lin": nn.Linear(24, 8)})
        self.rnns = nn.ModuleList([
            nn.LSTM(8, 6, num_layers=2, batch_first=True, bidirectional=True, dropout=0.2),
            nn.GRU(12, 5),
            nn.RNN(5, 4, nonlinearity="relu")])
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(4, 7), "gru": nn.GRUCell(7, 8)})
        self.attn = nn.ModuleList([nn.MultiheadAttention(8, 2, batch_first=True),
                                   nn.MultiheadAttention(8, 2, kdim=5, vdim=3)])
        self.out = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, 3))

    def forward(self, img, seq):
        f = self.features(img)                       # [B, 4, 2, 3]
        g = self.heads["max"](f).flatten(1)          # [B, 4]
        z = self.heads["lin"](f.flatten(1))          # [B, 8]
        y, _ = self.rnns[0](seq + z[:, None])        # [B, T, 12]
        y, _ = self.rnns[1](y.transpose(0, 1))       # [T, B, 5]
        r, _ = self.rnns[2](y)                       # [T, B, 4]
        hx = None
        for t in range(r.shape[0]):
            hx = self.cells["lstm"](r[t], hx)        # ([B, 7], [B, 7])
        h = self.cells["gru"](hx[0])                 # [B, 8]
        a, _ = self.attn[0](h[:, None] + seq, seq, seq)                       # [B, T, 8], with weights
        b, _ = self.attn[1](a.transpose(0, 1), y, y[..., :3], need_weights=False)  # [T, B, 8], fused
        return self.out(b.mean(0)) + g.sum(1, keepdim=True)


def _build(seed, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the default generator seeded, the global RNG state kept."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _perturb(model, gen):
    """Noise on every 1-D parameter (biases, norm weights: constants at init)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(make_tensor(p.shape, p.dtype, gen, scale=0.1))
    return model


def _no_attention_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return model


def _zoo_inputs(dtype, gen, B=3, T=4):
    return [make_tensor((B, 3, 12, 12), dtype, gen, requires_grad=True),
            make_tensor((B, T, 8), dtype, gen, requires_grad=True)]


def _converted_copy(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in these models may be left behind
        return convert(copy.deepcopy(model))


def _assert_pykernels_types(model, expected_count):
    count = 0
    for name, m in model.named_modules():
        kind = type(m).__name__
        if kind in KINDS and name.split(".")[-1] != "out_proj":
            assert type(m) is getattr(pkn, kind), f"{name}: {type(m)}"
            count += 1
    assert count == expected_count


# ---- parity before / after conversion --------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_transformer_encoder_layer(dtype, train, batch_first, norm_first, seed, gen):
    layer = _build(seed, nn.TransformerEncoderLayer, 8, 2, dim_feedforward=16, dropout=0.1,
                   batch_first=batch_first, norm_first=norm_first, dtype=dtype)
    _perturb(_no_attention_dropout(layer), gen)
    if batch_first:
        # torch's batch_first attention returns a transposed view ([B, L, E] with strides
        # (E, B*E, 1)), pykernels' a contiguous [B, L, E]; torch's dropout draws its mask in
        # memory order, so dropout1 (right after self_attn) drops other elements from the same
        # seed: equal in distribution, not in bits. dropout and dropout2 stay at 0.1.
        layer.dropout1.p = 0.0
    converted = _converted_copy(layer)
    _assert_pykernels_types(converted, 3)        # self_attn, linear1, linear2
    B, S = 3, 5
    src = make_tensor((B, S, 8) if batch_first else (S, B, 8), dtype, gen, requires_grad=True)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, 3:] = True
    assert_twin_parity(converted, layer, [src, None, pad], train=train, seed=seed)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")   # torch's, at construction
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", MODES)
def test_transformer(dtype, train, seed, gen):
    model = _build(seed, nn.Transformer, d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1,
                   dim_feedforward=16, dropout=0.1, dtype=dtype)
    _perturb(_no_attention_dropout(model), gen)
    converted = _converted_copy(model)
    _assert_pykernels_types(converted, 2 * 3 + 1 * 4)   # encoder: attn + 2 linear; decoder: 2 attn + 2 linear
    S, T, B = 5, 4, 2
    src = make_tensor((S, B, 8), dtype, gen, requires_grad=True)
    tgt = make_tensor((T, B, 8), dtype, gen, requires_grad=True)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype)
    assert_twin_parity(converted, model, [src, tgt, None, tgt_mask], train=train, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", MODES)
def test_nested_containers(dtype, train, seed, gen):
    model = _perturb(_build(seed, Zoo).to(dtype), gen)
    converted = _converted_copy(model)
    _assert_pykernels_types(converted, 16)
    assert type(converted.attn[0].out_proj) is type(model.attn[0].out_proj)  # part of the attention
    assert_twin_parity(converted, model, _zoo_inputs(dtype, gen), train=train, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", MODES)
def test_mnist_example_cnn(dtype, train, seed, gen):
    model = _perturb(_build(seed, MnistNet).to(dtype), gen)
    converted = _converted_copy(model)
    _assert_pykernels_types(converted, 4)
    x = make_tensor((4, 1, 28, 28), dtype, gen, requires_grad=True)
    assert_twin_parity(converted, model, [x], train=train, seed=seed)


# ---- the converted layers really run pykernels ---------------------------------------------------
def test_every_converted_layer_calls_pykernels(seed, gen):
    """Per layer: the pykernels custom ops called between its forward pre-hook and its hook."""
    model = _converted_copy(_build(seed, Zoo).double())
    calls = {}
    with RecordPykernelsCalls() as rec:
        for name, m in model.named_modules():
            if isinstance(m, tuple(getattr(pkn, k) for k in KINDS)):
                m.register_forward_pre_hook(lambda mod, args, name=name: calls.__setitem__(name, len(rec.calls)))
                m.register_forward_hook(
                    lambda mod, args, out, name=name: calls.__setitem__(name, len(rec.calls) - calls[name]))
        model(*_zoo_inputs(F64, gen))
    assert len(calls) == 16
    assert all(n > 0 for n in calls.values()), calls


# ---- what a conversion keeps ----------------------------------------------------------------------
def test_same_parameters_and_optimizer(seed, gen):
    model = _perturb(_build(seed, MnistNet).double(), gen)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    before = {n: p for n, p in model.named_parameters()}
    initial = [p.detach().clone() for p in model.parameters()]
    bufs = {n: b for n, b in model.named_buffers()}
    assert convert(model) is model
    assert {n: p for n, p in model.named_parameters()} == before       # the same objects
    assert all(model.get_buffer(n) is b for n, b in bufs.items())
    x = make_tensor((3, 1, 28, 28), F64, gen)
    for m, o in ((model, opt), (twin, opt_twin)):
        for _ in range(2):
            o.zero_grad()
            torch.manual_seed(seed)
            m(x).sum().backward()
            o.step()
    for (n, p), q, p0 in zip(model.named_parameters(), twin.parameters(), initial):
        assert not torch.equal(p, p0), f"{n} was not stepped"
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=n)


def test_hooks_fire_after_convert(gen):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    fired = []
    model[0].register_forward_pre_hook(lambda m, args: fired.append("pre"))
    model[0].register_forward_hook(lambda m, args, out: fired.append("post"))
    model[2].register_full_backward_hook(lambda m, gin, gout: fired.append("backward"))
    model[2].register_forward_hook(lambda m, args, out: out * 2)          # a hook that edits the output
    x = make_tensor((3, 4), F64, gen)
    ref = model(x)
    fired.clear()
    convert(model)
    assert type(model[0]) is pkn.Linear
    with RecordPykernelsCalls("linear") as rec:
        out = model(x)
    out.sum().backward()
    assert fired == ["pre", "post", "backward"]
    assert rec.calls
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_training_flags_dtype_and_device_kept():
    model = Zoo().double()
    model.features.eval()
    model.rnns[1].eval()
    flags = {n: m.training for n, m in model.named_modules()}
    convert(model)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.dtype == F64 for p in model.parameters())
    with torch.device("meta"):
        meta = Zoo()
    convert(meta)
    _assert_pykernels_types(meta, 16)
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_root_and_idempotent(seed, gen):
    lstm = _build(seed, nn.LSTM, 3, 4, num_layers=2).double()
    assert convert(lstm) is lstm and type(lstm) is pkn.LSTM
    model = _perturb(_build(seed, Zoo).double(), gen)
    layer = _build(seed, nn.TransformerEncoderLayer, 8, 2, 16, batch_first=True, dtype=F64).eval()
    for m in (model, layer):
        convert(m)
        params = list(m.parameters())
        state = copy.deepcopy(m.state_dict())
        types = [type(s) for s in m.modules()]
        flags = [getattr(s, "activation_relu_or_gelu", None) for s in m.modules()]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert convert(m) is m
        assert [type(s) for s in m.modules()] == types
        assert [getattr(s, "activation_relu_or_gelu", None) for s in m.modules()] == flags
        assert all(p is q for p, q in zip(m.parameters(), params))
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


# ---- what convert leaves alone --------------------------------------------------------------------
class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def _awkward_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)      # torch.nn.utils.weight_norm is deprecated
        hook_normed = nn.utils.weight_norm(nn.Linear(4, 4))
    pruned = prune.l1_unstructured(nn.Linear(4, 4), "weight", amount=0.5)
    extra = nn.Linear(4, 4)
    extra.register_buffer("scale", torch.ones(4))            # something of the user's own: harmless
    return nn.ModuleDict({
        "ok": nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2), extra),
        "odd": nn.Sequential(MyLinear(4, 4),
                             nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)),
                             hook_normed,
                             nn.LSTM(4, 6, proj_size=3),
                             nn.LazyLinear(4),
                             pruned),
        "encoder": nn.TransformerEncoderLayer(4, 2, 8, batch_first=True),
    })


LEFT = {  # qualified name -> (type in the warning, a word of the reason)
    "odd.0": ("test_convert.MyLinear", "subclass"),
    "odd.1": ("ParametrizedLinear", "parametrized"),
    "odd.2": ("torch.nn.Linear", "weight_g"),
    "odd.3": ("torch.nn.LSTM", "proj_size=3"),
    "odd.4": ("torch.nn.LazyLinear", "lazy"),
    "odd.5": ("torch.nn.Linear", "weight_orig"),
}


def test_unconvertible_layers_stay_and_are_reported_once():
    model = _awkward_model()
    odd_types = [type(m) for m in model["odd"]]
    odd_params = [list(m.parameters()) for m in model["odd"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(model)
    ours = [w for w in caught if "pykernels.convert" in str(w.message)]
    assert len(ours) == 1 and ours[0].category is UserWarning
    assert ours[0].filename == __file__                    # points at the caller
    lines = str(ours[0].message).splitlines()[1:]
    assert len(lines) == len(LEFT), lines
    for line, (name, (kind, word)) in zip(lines, LEFT.items()):
        assert line.strip().startswith(f"{name} (") and kind in line and word in line, line
    assert [type(m) for m in model["odd"]] == odd_types
    assert all(all(p is q for p, q in zip(m.parameters(), ps)) for m, ps in zip(model["odd"], odd_params))
    assert [type(m) for m in model["ok"]] == [pkn.Linear, pkn.MultiheadAttention, pkn.Linear]
    assert "out_proj" not in str(ours[0].message)


def test_strict_raises_and_changes_nothing():
    model = _awkward_model()
    types = [type(m) for m in model.modules()]
    with pytest.raises(NotImplementedError, match=r"odd\.3 \(torch\.nn\.LSTM\): .*proj_size=3") as info:
        convert(model, strict=True)
    assert all(name in str(info.value) for name in LEFT)
    assert [type(m) for m in model.modules()] == types
    assert model["encoder"].activation_relu_or_gelu == 1
    assert convert(model["ok"], strict=True) is model["ok"]      # nothing left behind: no error


def test_layer_converted_then_mutated_is_checked_by_its_forward(gen):
    lstm = convert(nn.LSTM(3, 4))
    lstm.proj_size = 2
    with pytest.raises(NotImplementedError, match="proj_size"):
        lstm(make_tensor((2, 1, 3), F32, gen))


# ---- layers= ----------------------------------------------------------------------------------------
def test_layers_restricts_kinds():
    model = convert(Zoo(), layers=["Linear", nn.GRU, pkn.Conv2d])
    picked = {"Linear", "GRU", "Conv2d"}
    for name, m in model.named_modules():
        kind = type(m).__name__
        if kind in KINDS and not name.endswith("out_proj"):
            assert (type(m) is getattr(pkn, kind)) == (kind in picked), name
    assert type(model.attn[0].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    lstm = convert(nn.LSTM(3, 4), layers="LSTM")
    assert type(lstm) is pkn.LSTM
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # an unchosen kind is not reported
        odd = convert(nn.Sequential(nn.LSTM(4, 6, proj_size=3), nn.Linear(2, 2)), layers=["Linear"])
    assert type(odd[0]) is nn.LSTM and type(odd[1]) is pkn.Linear


@pytest.mark.parametrize("layers, error", [
    (["Linaer"], ValueError), (["linear"], ValueError), ([nn.ReLU], ValueError), ([nn.LazyLinear], ValueError),
    ([], ValueError), ([3], TypeError), (3, TypeError), ([nn.Linear(2, 2)], TypeError)])
def test_bad_layers(layers, error):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(error):
        convert(model, layers=layers)
    assert type(model[0]) is nn.Linear


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        convert(torch.zeros(2))
    with pytest.raises(TypeError, match="strict"):
        convert(nn.Linear(2, 2), strict="yes")


# ---- torch's transformer inference fast paths ----------------------------------------------------
class RecordAten(TorchDispatchMode):
    """The names of every op dispatched (to see torch's fused fast-path ops)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", DTYPES)
def test_encoder_layer_fast_path_does_not_bypass(dtype, seed, gen):
    """In eval mode under no_grad, torch's layer runs ONE fused op and never calls self_attn /
    linear1 / linear2; the converted layer runs the pykernels layers instead, same result."""
    layer = _perturb(_build(seed, nn.TransformerEncoderLayer, 8, 2, 16, batch_first=True, dtype=dtype), gen).eval()
    converted = _converted_copy(layer)
    x = make_tensor((3, 5, 8), dtype, gen)
    with torch.no_grad(), RecordAten() as torch_ops:
        ref = layer(x)
    assert "aten::_transformer_encoder_layer_fwd" in torch_ops.names   # what convert has to undo
    with torch.no_grad(), RecordAten() as ops, RecordPykernelsCalls() as rec:
        out = converted(x)
    assert "aten::_transformer_encoder_layer_fwd" not in ops.names
    assert sorted({f._name for f, _, _ in rec.calls}) == ["pykernels::attention", "pykernels::linear"]
    assert converted.activation_relu_or_gelu == 0 and layer.activation_relu_or_gelu == 1
    torch.testing.assert_close(out, ref, rtol=1e-9 if dtype == F64 else 2e-5, atol=1e-9 if dtype == F64 else 2e-5)


def test_encoder_nested_path_is_off_after_convert(seed, gen):
    """torch.nn.TransformerEncoder packs a padded batch into a NestedTensor (eval, no_grad, with
    src_key_padding_mask); after convert it does not, and the result equals torch's, which is 0 at
    padded positions on the nested path and torch's ordinary values without it."""
    enc = _build(seed, nn.TransformerEncoder, nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2).double()
    enc = _perturb(enc, gen).eval()
    assert enc.use_nested_tensor
    converted = _converted_copy(enc)
    assert not converted.use_nested_tensor
    x = make_tensor((3, 5, 8), F64, gen)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True
    pad[2, 4] = True
    with torch.no_grad(), RecordPykernelsCalls("attention") as rec:
        out = converted(x, src_key_padding_mask=pad)
    assert len(rec.calls) == 2
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # torch: "nested tensors are a prototype"
        nested = enc(x, src_key_padding_mask=pad)
    torch.testing.assert_close(out[~pad], nested[~pad], rtol=1e-9, atol=1e-9)
    assert (nested[pad] == 0).all()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            plain = enc(x, src_key_padding_mask=pad)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(out, plain, rtol=1e-9, atol=1e-9)


def test_pykernels_exports_convert():
    assert "convert" in pykernels.__all__ and pykernels.convert is convert
