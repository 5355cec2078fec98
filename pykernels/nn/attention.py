"""pykernels.nn.MultiheadAttention: torch.nn.MultiheadAttention on pykernels' ops (same
constructor, parameters, state_dict keys and forward contract as torch's, so
``load_state_dict(torch_mha.state_dict())`` just works).

forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
        average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights or None)

Shapes (E = embed_dim, L target length, S source length, B batch, nh = num_heads, hd = E / nh):
query [L, B, E] ([B, L, E] with batch_first; [L, E] unbatched), key [S, B, kdim],
value [S, B, vdim]; key_padding_mask [B, S] ([S] unbatched); attn_mask [L, S] or [B*nh, L, S].
Bool masks mark positions NOT attended (True = masked out; torch.nn.MultiheadAttention's
convention, the opposite of scaled_dot_product_attention's); float masks are added to the scores.
The computation is torch's (torch.nn.functional.multi_head_attention_forward):
    q, k, v  = the input projections            (pykernels.ops.linear; one GEMM for packed
                                                 self-attention, two for key is value)
    k, v     += a bias_k / bias_v row, then a zero row (add_zero_attn), masks padded to match
    heads    [B, nh, L, hd], [B, nh, S', hd]    (views of the projections, no copy)
    mask     = attn_mask + key_padding_mask     (torch merges them by adding the float forms;
                                                 two bool masks are merged with | here, same
                                                 result, and stay bool: a smaller mask)
    out      = softmax(q k^T / sqrt(hd) + mask) (dropout in training) @ v, heads concatenated
    output   = out @ out_proj.weight^T + out_proj.bias   (pykernels.ops.linear)
need_weights=False runs the attention as ONE fused kernel (pykernels.ops.attention: the N x S
weights are never stored); need_weights=True must return the weights, so that path is NOT
fused: the scores by pykernels.ops.matmul, torch.softmax, torch's dropout on the weights (as
torch does), and pykernels.ops.matmul for weights @ v. Dropout applies in training mode only.
The fused path's dropout mask comes from pykernels' Philox stream (see pykernels.ops.attention),
not torch's dropout stream, so with dropout > 0 it matches torch in distribution, not in bits.
is_causal is the hint torch takes: attn_mask must still be given; with need_weights=False and
no key_padding_mask the kernel's causal mode replaces attn_mask (as torch does), otherwise
attn_mask is used as given.
Rows where every key is masked: the fused path gives 0 (as torch's SDPA does), the
need_weights path NaN (as torch's softmax does).

Not supported: torch's NestedTensor fast path (inputs are plain tensors; the results equal the
fast path's), dtypes the active backend does not support (C++: float32, float64).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops


class MultiheadAttention(torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose forward runs pykernels ops (see the module docstring).

    Same constructor (embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
    add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None, dtype=None), same
    parameters and state_dict keys; forward returns what torch's does. need_weights=False runs
    one fused pykernels.ops.attention kernel; need_weights=True (torch's default) is NOT fused:
    it computes the [B, num_heads, L, S] weights explicitly, as torch does.

    Raises (from forward): the AssertionError / RuntimeError torch raises for inconsistent
    shapes and masks (same messages); TypeError for dtypes the active backend does not support.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        batched = _shape_check(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        _check_mask_dtype(key_padding_mask, "key_padding_mask", attn_mask, "attn_mask")
        _check_mask_dtype(attn_mask, "attn_mask", None, "")
        self_attn, kv_same = query is key and key is value, key is value
        batch_first = self.batch_first and batched
        if not batched:  # [L, E] -> [L, 1, E]: batch size 1, sequence first
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if batch_first:
            B, L, E = query.shape
            S = key.shape[1]
        else:
            L, B, E = query.shape
            S = key.shape[0]
        nh = self.num_heads
        hd = E // nh

        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                               "module method `generate_square_subsequent_mask` to create this mask.")
        # torch: the causal hint replaces attn_mask only on the fused path without key padding
        causal = is_causal and key_padding_mask is None and not need_weights
        if causal:
            attn_mask = None
        if E != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got {E}")
        if not self._qkv_same_embed_dim:
            if key.shape[:2] != value.shape[:2]:
                raise AssertionError(f"key's sequence and batch dims {key.shape[:2]} do not match value's "
                                     f"{value.shape[:2]}")
        elif key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")

        q, k, v = self._in_projection(query, key, value, self_attn, kv_same)   # [.., .., E] each

        if attn_mask is not None:  # -> [1, 1, L, S] or [B, nh, L, S]
            if attn_mask.dim() == 2:
                if attn_mask.shape != (L, S):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(L, S)}.")
                attn_mask = attn_mask[None, None]
            elif attn_mask.dim() == 3:
                if attn_mask.shape != (B * nh, L, S):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(B * nh, L, S)}.")
                attn_mask = attn_mask.reshape(B, nh, L, S)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")

        q4, k4, v4 = (self._heads(t, batch_first) for t in (q, k, v))      # [B, nh, L or S, hd]
        extra = []  # the key rows appended after the S projected ones
        if self.bias_k is not None and self.bias_v is not None:
            extra.append((self.bias_k.view(1, nh, 1, hd).expand(B, nh, 1, hd),
                          self.bias_v.view(1, nh, 1, hd).expand(B, nh, 1, hd)))
        elif self.bias_k is not None or self.bias_v is not None:
            raise AssertionError("bias_k and bias_v must be both set or both None")
        if self.add_zero_attn:
            z = k4.new_zeros((B, nh, 1, hd))
            extra.append((z, z))
        if extra:
            k4 = torch.cat([k4] + [e[0] for e in extra], dim=2)
            v4 = torch.cat([v4] + [e[1] for e in extra], dim=2)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, len(extra)))   # the appended keys: not masked
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, len(extra)))
        S2 = k4.shape[2]
        if key_padding_mask is not None:
            if key_padding_mask.shape[0] != B:
                raise AssertionError(f"Expected key_padded_mask.shape[0] to be {B}, but got "
                                     f"{key_padding_mask.shape[0]}")
            if key_padding_mask.shape[1] != S2:
                raise AssertionError(f"Expected key_padded_mask.shape[1] to be {S2}, but got "
                                     f"{key_padding_mask.shape[1]}")
            key_padding_mask = key_padding_mask[:, None, None, :]
        mask = _merge_masks(attn_mask, key_padding_mask, q.dtype)   # broadcastable to [B, nh, L, S2]
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:  # not fused: the weights are an output
            scores = ops.matmul(q4 * math.sqrt(1.0 / float(hd)), k4.transpose(-2, -1))   # [B, nh, L, S2]
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out4 = ops.matmul(weights, v4)                                           # [B, nh, L, hd]
        else:
            weights = None
            keep = None if mask is None else (~mask if mask.dtype == torch.bool else mask)
            out4 = ops.attention(q4, k4, v4, keep, is_causal=causal, dropout_p=dropout_p)

        if batch_first:
            out = out4.permute(0, 2, 1, 3).reshape(B, L, E)
        else:
            out = out4.permute(2, 0, 1, 3).reshape(L, B, E)
        out = ops.linear(out, self.out_proj.weight, self.out_proj.bias)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        return out, weights

    def _in_projection(self, query: Tensor, key: Tensor, value: Tensor, self_attn: bool,
                       kv_same: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v [.., .., E]: views into one projection where torch packs them."""
        E = self.embed_dim
        b = self.in_proj_bias
        if not self._qkv_same_embed_dim:
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
            return (ops.linear(query, self.q_proj_weight, bq), ops.linear(key, self.k_proj_weight, bk),
                    ops.linear(value, self.v_proj_weight, bv))
        w = self.in_proj_weight
        if self_attn:
            qkv = ops.linear(query, w, b)
            return qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
        if kv_same:
            kv = ops.linear(key, w[E:], None if b is None else b[E:])
            return ops.linear(query, w[:E], None if b is None else b[:E]), kv[..., :E], kv[..., E:]
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        return ops.linear(query, wq, bq), ops.linear(key, wk, bk), ops.linear(value, wv, bv)

    def _heads(self, t: Tensor, batch_first: bool) -> Tensor:
        """[T, B, E] (or [B, T, E]) -> [B, nh, T, hd], a view."""
        t = t.unflatten(-1, (self.num_heads, self.head_dim))
        return t.permute(0, 2, 1, 3) if batch_first else t.permute(1, 2, 0, 3)


def _merge_masks(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                 dtype: torch.dtype) -> Optional[Tensor]:
    """One mask broadcastable to [B, nh, L, S]: bool (True = masked out) when every given mask is
    bool, else additive of ``dtype`` (bool masks as 0 / -inf, then summed, as torch does)."""
    masks = [m for m in (attn_mask, key_padding_mask) if m is not None]
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        return masks[0] if len(masks) == 1 else masks[0] | masks[1]
    adds = [torch.zeros_like(m, dtype=dtype).masked_fill_(m, float("-inf")) if m.dtype == torch.bool else m
            for m in masks]
    return adds[0] if len(adds) == 1 else adds[0] + adds[1]


def _check_mask_dtype(mask: Optional[Tensor], name: str, other: Optional[Tensor], other_name: str) -> None:
    """torch's _canonical_mask checks: bool or floating point; a warning for mismatched masks."""
    if mask is None:
        return
    if mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")
    if other is not None and mask.dtype != other.dtype:
        warnings.warn(f"Support for mismatched {name} and {other_name} is deprecated. Use same type for "
                      "both instead.", stacklevel=3)


def _shape_check(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor],
                 attn_mask: Optional[Tensor], num_heads: int) -> bool:
    """torch's _mha_shape_check: whether the input is batched; the same errors."""
    if query.dim() == 3:
        if key.dim() != 3 or value.dim() != 3:
            raise AssertionError("For batched (3-D) `query`, expected `key` and `value` to be 3-D but found "
                                 f"{key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 2:
            raise AssertionError("For batched (3-D) `query`, expected `key_padding_mask` to be `None` or 2-D "
                                 f"but found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise AssertionError("For batched (3-D) `query`, expected `attn_mask` to be `None`, 2-D or 3-D "
                                 f"but found {attn_mask.dim()}-D tensor instead")
        return True
    if query.dim() == 2:
        if key.dim() != 2 or value.dim() != 2:
            raise AssertionError("For unbatched (2-D) `query`, expected `key` and `value` to be 2-D but found "
                                 f"{key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 1:
            raise AssertionError("For unbatched (2-D) `query`, expected `key_padding_mask` to be `None` or 1-D "
                                 f"but found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None:
            if attn_mask.dim() not in (2, 3):
                raise AssertionError("For unbatched (2-D) `query`, expected `attn_mask` to be `None`, 2-D or "
                                     f"3-D but found {attn_mask.dim()}-D tensor instead")
            if attn_mask.dim() == 3:
                expected = (num_heads, query.shape[0], key.shape[0])
                if attn_mask.shape != expected:
                    raise AssertionError(f"Expected `attn_mask` shape to be {expected} but got {attn_mask.shape}")
        return False
    raise AssertionError("query should be unbatched 2D or batched 3D tensor but received "
                         f"{query.dim()}-D query tensor")
