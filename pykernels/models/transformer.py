"""Transformer encoder (post- and pre-norm) and a small Vision Transformer on pykernels layers.

TransformerEncoderLayer: torch.nn.TransformerEncoderLayer's computation and parameter names
(self_attn, linear1, linear2, norm1, norm2; dropout, dropout1, dropout2), so a state_dict of
torch's layer loads as is. x [S, B, E] ([B, S, E] with batch_first), E = d_model:
    post-norm: x = norm1(x + sa(x));         x = norm2(x + ff(x))
    pre-norm:  x = x + sa(norm1(x));         x = x + ff(norm2(x))
    sa(x) = dropout1(self_attn(x, x, x, need_weights=False)[0])   (pykernels MultiheadAttention:
            one packed QKV GEMM, the fused attention kernel, the output GEMM)
    ff(x) = dropout2(linear2(dropout(act(linear1(x)))))          act = relu or gelu (exact)
  Masks are put in torch's canonical form first (a bool mask, True = masked out, becomes an
  additive 0 / -inf mask of x's dtype), as torch's layer does, so both see the same masks.
  LayerNorm and Dropout are torch.nn's in both builds (pykernels has no kernel for them).
  Not taken: torch's inference fast path (torch._transformer_encoder_layer_fwd, eval mode
  under no_grad) and nested tensors; the plain path computes the same function.
TransformerEncoder: num_layers deep copies of one layer (layers.N.* keys, as torch's), then an
optional norm; mask=None / is_causal=None detects a causal mask as torch does.
ViT: image [B, C, H, W] -> patch_embed Conv2d(C, dim, k = stride = patch) [B, dim, H/p, W/p]
    -> tokens [B, N, dim] (N = (H/p)^2) -> [class token; tokens] + pos_embed [B, N+1, dim]
    -> dropout -> encoder (depth pre-norm layers, gelu, batch_first) -> norm -> the class
    token [B, dim] -> head Linear(dim, num_classes) [B, num_classes] (logits).

`X.with_torch_layers(...)` builds the same model from torch.nn (same state_dict keys).
"""

import copy

import torch
import torch.nn.functional as F

from ._base import TorchTwin, resolve_layers

__all__ = ["TransformerEncoderLayer", "TransformerEncoder", "ViT"]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _canonical_mask(mask, name, dtype):
    """torch's canonical mask (torch.nn.functional._canonical_mask): bool (True = masked out)
    -> additive 0 / -inf of ``dtype``; a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")
    return mask


def _is_causal_mask(mask, seq_len):
    """torch's causal-mask detection: ``mask`` equals the [S, S] -inf-above-the-diagonal mask."""
    if mask is None or tuple(mask.shape) != (seq_len, seq_len):
        return False
    causal = torch.full((seq_len, seq_len), float("-inf"), dtype=mask.dtype, device=mask.device).triu(1)
    return bool((mask == causal).all())


class TransformerEncoderLayer(TorchTwin, torch.nn.Module):
    """``torch.nn.TransformerEncoderLayer`` on pykernels MultiheadAttention and Linear.

    Same constructor arguments (d_model, nhead, dim_feedforward=2048, dropout=0.1,
    activation="relu" | "gelu" (or a callable, as torch), layer_norm_eps=1e-5, batch_first=False,
    norm_first=False, bias=True, device, dtype), parameter names and forward(src, src_mask=None,
    src_key_padding_mask=None, is_causal=False) as torch's; see the module docstring.
    With dropout > 0 in training mode the attention dropout (inside pykernels' fused kernel)
    draws a different mask than torch's: equal in distribution, not in bits.

    Raises:
        ValueError: d_model not divisible by nhead, an unknown activation name.
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, *, layers=None, device=None, dtype=None):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"activation={activation!r}: expected 'relu' or 'gelu' (or a callable)")
            activation = _ACTIVATIONS[activation]
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                               **fk)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **fk)
        self.dropout = torch.nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **fk)
        self.norm_first = norm_first
        self.norm1 = torch.nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = torch.nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1 = torch.nn.Dropout(dropout)
        self.dropout2 = torch.nn.Dropout(dropout)
        self.activation = activation

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        src_key_padding_mask = _canonical_mask(src_key_padding_mask, "src_key_padding_mask", src.dtype)
        src_mask = _canonical_mask(src_mask, "src_mask", src.dtype)
        x = src                                                   # [S, B, E] or [B, S, E]
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))   # [.., E] -> [.., ff] -> [.., E]
        return self.dropout2(x)


class TransformerEncoder(torch.nn.Module):
    """``torch.nn.TransformerEncoder``: ``num_layers`` deep copies of ``encoder_layer`` (keys
    layers.N.*), then ``norm`` if given. forward(src, mask=None, src_key_padding_mask=None,
    is_causal=None) as torch's (is_causal=None: detected from ``mask``), without torch's
    nested-tensor conversion of padded inputs (enable_nested_tensor): every layer runs on the
    padded tensor and padded positions are computed, not zeroed.

    The layer namespace is the layer's: pass a TransformerEncoderLayer (pykernels build) or its
    twin (TransformerEncoderLayer.with_torch_layers, or torch.nn.TransformerEncoderLayer itself).
    """

    def __init__(self, encoder_layer, num_layers, norm=None):
        super().__init__()
        self.layers = torch.nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        src_key_padding_mask = _canonical_mask(src_key_padding_mask, "src_key_padding_mask", src.dtype)
        mask = _canonical_mask(mask, "mask", src.dtype)
        batch_first = getattr(self.layers[0].self_attn, "batch_first", False) if self.layers else False
        seq_len = src.shape[1 if batch_first and src.dim() == 3 else 0]
        if is_causal is None:
            is_causal = _is_causal_mask(mask, seq_len)
        x = src
        for mod in self.layers:
            x = mod(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        if self.norm is not None:
            x = self.norm(x)
        return x


class ViT(TorchTwin, torch.nn.Module):
    """A small Vision Transformer (see the module docstring): patches -> pre-norm encoder -> head.

    Args:
        image_size: input height = width.
        patch_size: patch side (the embedding convolution's kernel and stride).
        in_channels, num_classes: image channels, output logits.
        dim: token width; depth: encoder layers; heads: attention heads (dim % heads == 0);
        mlp_dim: feed-forward width; dropout: in the encoder layers and on the embeddings.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: image_size not divisible by patch_size, dim not divisible by heads; from
            forward, an image that is not [B, in_channels, image_size, image_size].
    """

    def __init__(self, image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=4, heads=4,
                 mlp_dim=128, dropout=0.0, *, layers=None, device=None, dtype=None):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.image_size, self.in_channels = image_size, in_channels
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, **fk)
        self.cls_token = torch.nn.Parameter(torch.empty(1, 1, dim, **fk))
        self.pos_embed = torch.nn.Parameter(torch.empty(1, num_patches + 1, dim, **fk))
        torch.nn.init.trunc_normal_(self.cls_token, std=0.02)
        torch.nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.dropout = torch.nn.Dropout(dropout)
        layer = TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True,
                                        norm_first=True, layers=layers, **fk)
        self.encoder = TransformerEncoder(layer, depth)
        self.norm = torch.nn.LayerNorm(dim, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)

    def forward(self, x):
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x: expected [B, {want[0]}, {want[1]}, {want[2]}], got shape {tuple(x.shape)}")
        t = self.patch_embed(x).flatten(2).transpose(1, 2)                 # [B, N, dim]
        cls = self.cls_token.expand(t.shape[0], -1, -1)                    # [B, 1, dim]
        t = self.dropout(torch.cat([cls, t], dim=1) + self.pos_embed)     # [B, N+1, dim]
        t = self.encoder(t)
        return self.head(self.norm(t[:, 0]))                               # [B, num_classes]
