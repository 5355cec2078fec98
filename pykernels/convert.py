"""pykernels.convert: swap the torch.nn layers of an existing model for pykernels.nn ones, in place.

    model = pykernels.convert(model)                              # every supported layer
    model = pykernels.convert(model, layers=["Linear", torch.nn.Conv2d])
    model = pykernels.convert(model, strict=True)                 # raise instead of warning

How it converts, what it leaves alone and why, and what it does to torch.nn.Transformer*'s
inference fast paths: see ``convert``'s docstring (``help(pykernels.convert)``).
Tested by tests/test_convert.py.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

import torch
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from . import nn as pk_nn

__all__ = ["convert"]

LayerKinds = Union[str, Type[torch.nn.Module], Iterable[Union[str, Type[torch.nn.Module]]]]


def _attrs(*names: str) -> Callable[[torch.nn.Module], dict]:
    return lambda m: {n: getattr(m, n) for n in names}


def _with_bias(read: Callable[[torch.nn.Module], dict]) -> Callable[[torch.nn.Module], dict]:
    """Layers that hold ``bias`` as a Parameter (or None), built with ``bias=True/False``."""
    return lambda m: {**read(m), "bias": m.bias is not None}


_RNN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")

# torch.nn class name -> the layer's constructor arguments, read back from its attributes
# (device and dtype aside). The classes without a pykernels.nn twin are skipped in _twins().
# The pools hold no tensors and take no device / dtype arguments.
_CONSTRUCTOR_ARGS: Dict[str, Callable[[torch.nn.Module], dict]] = {
    "Linear": _with_bias(_attrs("in_features", "out_features")),
    "Conv2d": _with_bias(_attrs("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                                "groups", "padding_mode")),
    "ConvTranspose2d": _with_bias(_attrs("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                         "output_padding", "groups", "dilation", "padding_mode")),
    "MaxPool2d": _attrs("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    "AvgPool2d": _attrs("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "AdaptiveAvgPool2d": _attrs("output_size"),
    "AdaptiveMaxPool2d": _attrs("output_size", "return_indices"),
    "MultiheadAttention": lambda m: {
        **_attrs("embed_dim", "num_heads", "dropout", "add_zero_attn", "kdim", "vdim", "batch_first")(m),
        "bias": m.in_proj_bias is not None, "add_bias_kv": m.bias_k is not None},
    "LSTMCell": _attrs("input_size", "hidden_size", "bias"),
    "GRUCell": _attrs("input_size", "hidden_size", "bias"),
    "LSTM": _attrs(*_RNN_ARGS, "proj_size"),
    "GRU": _attrs(*_RNN_ARGS),
    "RNN": _attrs(*_RNN_ARGS, "nonlinearity"),
}
_NO_FACTORY_KWARGS = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d")


def _twins() -> Dict[type, type]:
    """torch.nn.X -> pykernels.nn.X for every kind convert takes (read at call time)."""
    return {getattr(torch.nn, name): getattr(pk_nn, name) for name in _CONSTRUCTOR_ARGS if hasattr(pk_nn, name)}


def _select(layers: Optional[LayerKinds], twins: Dict[type, type]) -> Dict[type, type]:
    """The kinds ``layers`` names (None: all), as torch.nn.X -> pykernels.nn.X."""
    if layers is None:
        return dict(twins)
    if isinstance(layers, (str, type)):
        layers = [layers]
    try:
        items = list(layers)
    except TypeError:
        raise TypeError("convert: layers must be None, a layer class or name, or an iterable of them, got "
                        f"{type(layers).__name__}") from None
    if not items:
        raise ValueError("convert: layers is empty, so nothing would be converted; pass layers=None for "
                         "every supported kind")
    by_name = {cls.__name__: cls for cls in twins}
    by_pk = {pk: cls for cls, pk in twins.items()}
    known = ", ".join(by_name)
    chosen: Dict[type, type] = {}
    for item in items:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"convert: unknown layer kind {item!r}; the kinds are: {known}")
            cls = by_name[item]
        elif isinstance(item, type):
            cls = by_pk.get(item, item)
            if cls not in twins:
                raise ValueError(f"convert: {item.__module__}.{item.__qualname__} is not a layer kind convert "
                                 f"takes; the kinds are torch.nn.{{{known}}}")
        else:
            raise TypeError(f"convert: layers holds {item!r} ({type(item).__name__}); expected torch.nn layer "
                            "classes or their names")
        chosen[cls] = twins[cls]
    return chosen


def _layout(module: torch.nn.Module) -> Dict[str, Optional[Tuple[int, ...]]]:
    """Every registered parameter and buffer (None included) of module and its submodules:
    qualified name -> shape."""
    out: Dict[str, Optional[Tuple[int, ...]]] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for kind, table in (("", sub._parameters), ("buffer ", sub._buffers)):
            for name, t in table.items():
                out[f"{kind}{prefix + '.' if prefix else ''}{name}"] = None if t is None else tuple(t.shape)
    return out


def _refusal(module: torch.nn.Module, pk_cls: type) -> Optional[str]:
    """Why ``module`` (exactly a torch.nn layer) cannot become ``pk_cls``; None if it can."""
    name = f"pykernels.nn.{pk_cls.__name__}"
    try:
        kwargs = _CONSTRUCTOR_ARGS[pk_cls.__name__](module)
    except AttributeError as e:
        return f"its constructor arguments cannot be read back ({e})"
    with warnings.catch_warnings():  # e.g. torch's "dropout with num_layers=1" warning, already given once
        warnings.simplefilter("ignore")
        try:
            meta = {} if pk_cls.__name__ in _NO_FACTORY_KWARGS else {"device": "meta"}
            fresh = pk_cls(**kwargs, **meta)
        except NotImplementedError as e:
            return str(e) if name in str(e) else f"{name}: {e}"
        except Exception as e:  # noqa: BLE001 - any failure to rebuild it is a reason to leave it alone
            return f"{name}(**{kwargs}) fails: {type(e).__name__}: {e}"
    have, want = _layout(module), _layout(fresh)
    wrong = sorted(k for k in want if k not in have or have[k] != want[k])
    if wrong:  # (entries the constructor does not make, e.g. a buffer a user added, do no harm)
        found = ", ".join(f"{k} missing" if k not in have else f"{k} of shape {have[k]}, not {want[k]}"
                          for k in wrong)
        extra = ", ".join(sorted(set(have) - set(want))) or "nothing"
        return (f"its parameters / buffers are not those {name} has with its constructor arguments "
                f"({found}; it has {extra} besides): reparametrized by hooks (torch.nn.utils.weight_norm, "
                "spectral_norm, prune) or edited after construction")
    lacking = sorted(set(vars(fresh)) - set(vars(module)))
    if lacking:
        return f"it lacks attributes {name} has ({', '.join(lacking)}): saved by another torch version?"
    return None


def _subclass_reason(module: torch.nn.Module, torch_cls: type) -> str:
    kind = f"torch.nn.{torch_cls.__name__}"
    if parametrize.is_parametrized(module):
        names = ", ".join(module.parametrizations.keys())
        return f"parametrized ({names}, torch.nn.utils.parametrize); convert takes plain {kind} layers"
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return f"a lazy layer not initialized yet: run one forward (it then becomes a plain {kind}), then convert"
    return f"a subclass of {kind}, whose forward or state may differ; convert takes exactly {kind}"


def _type_name(cls: type) -> str:
    if getattr(torch.nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _walk(model: torch.nn.Module, twins: Dict[type, type]):
    """(qualified name, module) of every module, root first, each once; the submodules of a layer
    of a supported kind are not visited (they are part of that layer)."""
    leaf_kinds = tuple(twins)
    seen = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if not isinstance(module, leaf_kinds):
            children = [(f"{name}.{n}" if name else n, c) for n, c in module.named_children() if c is not None]
            stack.extend(reversed(children))


def _holds_pykernels(module: torch.nn.Module, pk_kinds: tuple) -> bool:
    return any(isinstance(m, pk_kinds) for m in module.modules())


def _disable_fast_paths(model: torch.nn.Module, pk_kinds: tuple) -> None:
    """Turn off torch's fused encoder-layer inference path and the encoder's NestedTensor path
    where they would bypass (or be fed into) pykernels layers (see the module docstring)."""
    for m in model.modules():
        if isinstance(m, torch.nn.TransformerEncoderLayer):
            if getattr(m, "activation_relu_or_gelu", 0) and _holds_pykernels(m, pk_kinds):
                m.activation_relu_or_gelu = 0
        elif isinstance(m, torch.nn.TransformerEncoder):
            if getattr(m, "use_nested_tensor", False) and _holds_pykernels(m, pk_kinds):
                m.use_nested_tensor = False


def convert(model: torch.nn.Module, layers: Optional[LayerKinds] = None, *, strict: bool = False) -> torch.nn.Module:
    """Swap, in place and recursively, the supported torch.nn layers of ``model`` for their
    pykernels.nn twins; returns ``model`` (the same object).

    Args:
        model: any torch.nn.Module (itself converted if it is a supported layer).
        layers: which kinds to convert: None (all: Linear, Conv2d, ConvTranspose2d, MaxPool2d,
            AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, MultiheadAttention, LSTM, LSTMCell,
            GRU, GRUCell, RNN), or torch.nn classes (or their pykernels.nn twins) and/or their
            names, e.g. ``["Linear", torch.nn.Conv2d]``; one class or name alone is accepted too.
            Layers of other kinds are left alone without a word.
        strict: raise instead of warning when a layer of a chosen kind cannot be converted.

    How: a layer's class is swapped (``layer.__class__ = pykernels.nn.X``). Every pykernels.nn.X
    is a subclass of torch.nn.X that keeps torch's attributes, parameters and buffers and
    overrides ``forward``, so the very same module object stays in place: the same Parameter
    objects (an optimizer built before convert keeps stepping them), buffers, device, dtype
    (float64 stays float64), training flag, hooks and state_dict keys. Converting twice is a
    no-op: a pykernels layer is left as it is.

    Which layers: a module whose type is EXACTLY the torch.nn class of a chosen kind. A layer of
    a supported kind is a leaf: its own submodules (MultiheadAttention.out_proj, a
    NonDynamicallyQuantizableLinear that torch's attention never calls) belong to it and are
    neither converted on their own nor reported.

    Left as they are (listed in ONE UserWarning; with strict=True a NotImplementedError instead,
    raised before anything is changed):
      * subclasses of a chosen kind: a user subclass (its forward may differ), a parametrized
        layer (torch.nn.utils.parametrize: ParametrizedLinear, ...), an uninitialized lazy layer
        (LazyLinear, ...; once run it becomes a plain torch.nn.Linear, which converts), QAT layers;
      * a layer the pykernels constructor refuses (LSTM with proj_size > 0). The check IS the
        constructor: a throwaway pykernels.nn.X is built on device="meta" (no memory, no init
        cost) from the layer's constructor arguments, read back from its attributes; whatever it
        raises is the reason. That throwaway layer must also have exactly the layer's parameters,
        buffers and submodules (names and shapes; the layer may hold more, e.g. a buffer a user
        registered) and no attribute the layer lacks, so a layer reparametrized by hooks
        (torch.nn.utils.weight_norm / spectral_norm / prune: weight_g and weight_v, or weight_orig,
        instead of the parameter weight), edited after construction, or unpickled from a torch
        version with other attributes is left alone too, never swapped into an inconsistent state.
    Layers are checked at conversion time. A converted layer mutated afterwards is checked by its
    own forward, as any pykernels layer is: they re-check what they refuse there (LSTM.proj_size:
    NotImplementedError; ConvTranspose2d's padding_mode: ValueError), and the ops check dtypes
    (the C++ backend runs float32 and float64; float16 / bfloat16 on CPU tensors raise TypeError
    in forward; a converted model may still move to a GPU, so convert does not refuse them).

    torch.nn.TransformerEncoderLayer's inference fast path (what we found, torch 2.13): in eval
    mode, with autograd not recording (no_grad / inference_mode, or nothing requiring grad),
    batch_first=True, an even number of heads, relu / gelu, bias=True and no hooks, its forward
    never calls self_attn, linear1 or linear2: it hands their weights to ONE fused aten op,
    torch._transformer_encoder_layer_fwd. Swapping the classes alone, a converted layer would
    silently run torch's kernels there (same numbers, no pykernels call). torch.nn.
    TransformerEncoder adds its own path: given a src_key_padding_mask it packs the batch into a
    NestedTensor before the layers, which pykernels layers cannot take (RuntimeError: "NestedTensorImpl
    doesn't support sizes"). So convert turns both off, only for encoder layers / encoders that
    hold a pykernels layer after conversion: ``layer.activation_relu_or_gelu = 0`` (the flag
    torch reads only to choose and run the fused op; the module-by-module path applies
    ``layer.activation`` as before) and ``encoder.use_nested_tensor = False`` (the switch of the
    nested path). Their forward then runs norm / self_attn / dropout / linear1 / linear2 module
    by module: pykernels MultiheadAttention (one fused pykernels.ops.attention, need_weights=False)
    and pykernels Linear, with the same results. The cost: torch's fused inference op is not used
    for those layers (pykernels' kernels are, which is what convert is for), and at padded
    positions a nested-path encoder's output was 0 and is now computed like any other position
    (as torch's own non-nested path does). torch.nn.MultiheadAttention's own fast path
    (torch._native_multi_head_attention) lives in its forward, which pykernels overrides;
    torch.nn.TransformerDecoderLayer has no fast path; torch.nn.Transformer builds its encoder
    from these two classes, so the above applies to it.

    Warns:
        UserWarning: once, listing every layer of a chosen kind left as it is (qualified name,
            type, reason).

    Raises:
        NotImplementedError: strict=True and some layer cannot be converted (the same list); the
            model is left untouched.
        ValueError: ``layers`` names an unknown kind, a class convert does not take, or nothing.
        TypeError: ``model`` is not a torch.nn.Module, ``strict`` not a bool, or ``layers`` holds
            something other than classes and names.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"convert: strict must be a bool, got {type(strict).__name__}")
    twins = _twins()
    chosen = _select(layers, twins)
    pk_kinds = tuple(twins.values())

    swaps: List[Tuple[torch.nn.Module, type]] = []
    left: List[Tuple[str, str, str]] = []  # (qualified name, type, reason)
    for name, module in _walk(model, twins):
        if isinstance(module, pk_kinds):
            continue  # already a pykernels layer (or a subclass of one)
        torch_cls = next((c for c in chosen if isinstance(module, c)), None)
        if torch_cls is None:
            continue
        if type(module) is torch_cls:
            reason = _refusal(module, chosen[torch_cls])
            if reason is None:
                swaps.append((module, chosen[torch_cls]))
                continue
        else:
            reason = _subclass_reason(module, torch_cls)
        left.append((name or "(the model itself)", _type_name(type(module)), reason))

    if left:
        message = (f"pykernels.convert: {len(left)} layer(s) left as torch layers:\n"
                   + "\n".join(f"  {name} ({kind}): {reason}" for name, kind, reason in left))
        if strict:
            raise NotImplementedError(message + "\n(strict=True: nothing was converted)")
    for module, pk_cls in swaps:
        module.__class__ = pk_cls
    _disable_fast_paths(model, pk_kinds)
    if left:
        warnings.warn(message, UserWarning, stacklevel=2)
    return model
