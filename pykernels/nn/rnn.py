"""pykernels.nn recurrent modules: torch.nn.LSTMCell, GRUCell, LSTM and GRU whose forward runs
pykernels.ops (same constructor arguments, parameters, state_dict keys and forward contract as
torch's, so ``load_state_dict(torch_layer.state_dict())`` just works).

LSTM / GRU forward(input, hx=None) -> (output, (hn, cn)) / (output, hn), as torch's:
    input [T, B, I] ([B, T, I] with batch_first: a transposed view, never copied; [T, I]
    unbatched) or a PackedSequence; hx [L*D, B, H] (D = 2 when bidirectional), None = zeros.
    Layer l, direction d runs ONE sequence op (pykernels.ops.lstm / gru) over all T steps with
    weight_ih_l{l}[_reverse] etc.; d = 1 walks the same input with reverse=True (no flipped
    copy). The directions' outputs are concatenated on the feature dim (one copy per layer when
    bidirectional) and feed layer l + 1, through torch's F.dropout(p=dropout) in training mode
    (between layers, not after the last, as torch).
    PackedSequence: its data is unpacked once into a zero-padded [T, B, I] tensor in the packed
    (length-sorted) batch order (torch.nn.utils.rnn.pad_packed_sequence: one copy), every layer
    and direction runs with batch_sizes = the packed batch_sizes (padded steps never touch the
    state), and the padded output is packed again (one copy) into a PackedSequence with the same
    batch_sizes, sorted_indices and unsorted_indices; hx is permuted by sorted_indices on the way
    in and hn / cn by unsorted_indices on the way out, as torch does.
    Dropout draws from torch's default generator on the [T, B, D*H] layer output, as torch's
    CPU kernels do; with a PackedSequence the mask is drawn over the padded tensor, so it
    matches torch's only in distribution.
LSTMCell / GRUCell forward(input, hx=None): input [B, I] or [I], as torch's; one
pykernels.ops.lstm_cell / gru_cell call (the sequence op with T = 1).

torch.compile: dynamo refuses to trace torch.nn.RNNBase subclasses by default, so LSTM / GRU
run eagerly there (a graph break; fullgraph=True raises) unless torch._dynamo.config.allow_rnn
is True, in which case they trace into the pykernels::lstm / gru ops. The cells trace as is.

RNN (torch.nn.RNN, the tanh / relu Elman RNN) has no fused sequence kernel: per layer and
direction one pykernels.ops.linear projects the input of all T steps, then each step is one
pykernels.ops.linear(h, weight_hh) plus the add and the nonlinearity in torch (see RNN). Same
forward contract as LSTM / GRU, PackedSequence included.

Not supported: proj_size > 0 (LSTM with projections) raises NotImplementedError; dtypes the
active backend does not support (C++: float32, float64) raise TypeError from the ops.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import ops

__all__ = ["LSTMCell", "GRUCell", "LSTM", "GRU", "RNN"]


def _no_proj(module) -> None:
    if module.proj_size > 0:
        raise NotImplementedError(f"pykernels.nn.LSTM: proj_size={module.proj_size} (LSTM with projections) is "
                                  "not supported; use proj_size=0")


def _layers(module, x: Tensor, direction) -> Tuple[Tensor, List[Tensor]]:
    """All layers and directions of an LSTM / GRU / RNN module over x [T, B, I], with torch's
    inter-layer dropout. direction(x, k, w_ih, w_hh, b_ih, b_hh, reverse) runs layer-direction k
    and returns (y [T, B, H], its final states as a tuple). Returns output [T, B, D*H] and each
    final state stacked over the layer-directions, [L*D, B, H]."""
    D = 2 if module.bidirectional else 1
    weights = module._flat_weights
    per = len(weights) // (module.num_layers * D)     # 4 with biases, 2 without
    finals = []
    for layer in range(module.num_layers):
        if layer and module.dropout and module.training:
            x = F.dropout(x, module.dropout, True)
        outs = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh = (weights[k * per:(k + 1) * per] + [None, None])[:4]
            y, states = direction(x, k, w_ih, w_hh, b_ih, b_hh, d == 1)
            outs.append(y)
            finals.append(states)
        x = outs[0] if D == 1 else torch.cat(outs, 2)
    return x, [torch.stack(s) for s in zip(*finals)]


def _run_layers(module, kind: str, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """All layers and directions over x [T, B, I] (any strides); h0 / c0 [L*D, B, H] or None.
    Returns output [T, B, D*H], hn [L*D, B, H], cn (LSTM) [L*D, B, H]."""
    def direction(x, k, w_ih, w_hh, b_ih, b_hh, reverse):
        h = None if h0 is None else h0[k]
        if kind == "lstm":
            y, (h, c) = ops.lstm(x, (h, None if c0 is None else c0[k]), w_ih, w_hh, b_ih, b_hh,
                                 reverse=reverse, batch_sizes=batch_sizes)
            return y, (h, c)
        y, h = ops.gru(x, h, w_ih, w_hh, b_ih, b_hh, reverse=reverse, batch_sizes=batch_sizes)
        return y, (h,)

    out, states = _layers(module, x, direction)
    return out, states[0], (states[1] if kind == "lstm" else None)


def _unpack(packed_data: Tensor, batch_sizes: Tensor) -> Tensor:
    """A PackedSequence's data [sum(batch_sizes), I] -> zero-padded [T, B, I], batch in the packed
    (sorted) order (one copy)."""
    return pad_packed_sequence(PackedSequence(packed_data, batch_sizes))[0]


def _pack(y: Tensor, batch_sizes: Tensor) -> Tensor:
    """Padded y [T, B, H] (sorted order) -> the packed data [sum(batch_sizes), H] (one copy)."""
    B = y.shape[1]
    lengths = (batch_sizes.unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)   # [B], non-increasing
    return pack_padded_sequence(y, lengths, enforce_sorted=True).data


def _forward(module, kind: str, input, hx):
    """torch.nn.LSTM / GRU's forward (input and hx handling, same checks and messages) around
    _run_layers."""
    module._update_flat_weights()
    lstm = kind == "lstm"
    if lstm:
        _no_proj(module)
    orig_input = input
    if isinstance(orig_input, PackedSequence):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None:
            hx = module.permute_hidden(hx, sorted_indices)
            module.check_forward_args(data, hx, batch_sizes)
        else:
            module.check_input(data, batch_sizes)
        x = _unpack(data, batch_sizes)                           # [T, B, I], sorted batch order
        is_batched = True
    else:
        batch_sizes = sorted_indices = unsorted_indices = None
        if input.dim() not in (2, 3):
            raise ValueError(f"{'LSTM' if lstm else 'GRU'}: Expected input to be 2D or 3D, got {input.dim()}D "
                             "instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if module.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            if lstm:
                want = 3 if is_batched else 2
                if hx[0].dim() != want or hx[1].dim() != want:
                    what = ("batched 3-D input, hx and cx should also be 3-D" if is_batched else
                            "unbatched 2-D input, hx and cx should also be 2-D")
                    raise RuntimeError(f"For {what} but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            elif is_batched and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            elif not is_batched:
                if hx.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D "
                                       "tensor")
                hx = hx.unsqueeze(1)
            module.check_forward_args(input, hx, None)
        else:
            module.check_input(input, None)
        x = input.transpose(0, 1) if module.batch_first else input    # [T, B, I], a view
        if x.shape[0] == 0:  # as torch (pykernels.ops.lstm / gru themselves accept T = 0)
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    h0, c0 = (None, None) if hx is None else (hx if lstm else (hx, None))
    out, hn, cn = _run_layers(module, kind, x, h0, c0, batch_sizes)
    hidden = (hn, cn) if lstm else hn
    if isinstance(orig_input, PackedSequence):
        output = PackedSequence(_pack(out, batch_sizes), batch_sizes, sorted_indices, unsorted_indices)
        return output, module.permute_hidden(hidden, unsorted_indices)
    if module.batch_first:
        out = out.transpose(0, 1)
    if not is_batched:
        out = out.squeeze(batch_dim)
        hidden = (hn.squeeze(1), cn.squeeze(1)) if lstm else hn.squeeze(1)
    return out, hidden


class LSTM(torch.nn.LSTM):
    """``torch.nn.LSTM`` whose forward runs one ``pykernels.ops.lstm`` per layer and direction.

    Same constructor (input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None), parameters and
    state_dict keys; forward(input, hx=None) -> (output, (hn, cn)) as torch's, also for a
    PackedSequence input (see the module docstring).

    Raises:
        NotImplementedError: proj_size > 0 (at construction, or in forward if set later).
        The ValueError / RuntimeError torch raises for inconsistent input and hx (same messages);
        otherwise see ``pykernels.ops.lstm``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _no_proj(self)

    def forward(self, input, hx=None):
        return _forward(self, "lstm", input, hx)


class GRU(torch.nn.GRU):
    """``torch.nn.GRU`` whose forward runs one ``pykernels.ops.gru`` per layer and direction.

    Same constructor (input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None), parameters and state_dict keys;
    forward(input, hx=None) -> (output, hn) as torch's, also for a PackedSequence input.

    Raises:
        The ValueError / RuntimeError torch raises for inconsistent input and hx (same messages);
        otherwise see ``pykernels.ops.gru``.
    """

    def forward(self, input, hx=None):
        return _forward(self, "gru", input, hx)


class LSTMCell(torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` whose forward is one ``pykernels.ops.lstm_cell`` call.

    forward(input [B, I] or [I], hx=None or (h, c)) -> (h', c'), as torch's.

    Raises:
        ValueError: input or an hx member not 1-D or 2-D (torch's messages); otherwise see
            ``pykernels.ops.lstm_cell``.
    """

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        return ops.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUCell(torch.nn.GRUCell):
    """``torch.nn.GRUCell`` whose forward is one ``pykernels.ops.gru_cell`` call.

    forward(input [B, I] or [I], hx=None or h) -> h', as torch's.

    Raises:
        ValueError: input or hx not 1-D or 2-D (torch's messages); otherwise see
            ``pykernels.ops.gru_cell``.
    """

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        return ops.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


def _rnn_direction(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                   b_hh: Optional[Tensor], relu: bool, reverse: bool,
                   batch_sizes: Optional[List[int]]) -> Tuple[Tensor, Tensor]:
    """One layer, one direction of an Elman RNN: x [T, B, I], h0 [B, H] -> y [T, B, H], hn [B, H].

        h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),  act = tanh or relu
    The input projection of all T steps is ONE GEMM (x as [T*B, I]: a view, or one copy when x is
    a batch_first view; b_ih + b_hh folded into its bias); each step is one GEMM h W_hh^T ([B, H] @ [H, H]) plus the add and act in torch.
    batch_sizes (a list, non-increasing): at step t only rows b < batch_sizes[t] run (the batch
    is sorted by length, so they are the leading rows); the others keep their state, y = 0.
    """
    T, B, I = x.shape
    H = w_hh.shape[0]
    bias = None if b_ih is None else b_ih + b_hh
    xw = ops.linear(x.reshape(T * B, I), w_ih, bias).view(T, B, H)        # [T, B, H]
    act = torch.relu if relu else torch.tanh
    ys: List[Optional[Tensor]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        n = B if batch_sizes is None else batch_sizes[t]
        if n == B:
            h = act(xw[t] + ops.linear(h, w_hh))                              # [B, H]
            ys[t] = h
        else:  # a PackedSequence's step: rows n.. are past their sequence's end
            h_run = act(xw[t, :n] + ops.linear(h[:n], w_hh))                  # [n, H]
            h = torch.cat([h_run, h[n:]])
            ys[t] = torch.cat([h_run, h_run.new_zeros(B - n, H)])
    return torch.stack(ys), h


class RNN(torch.nn.RNN):
    """``torch.nn.RNN`` (Elman RNN, tanh or relu) whose forward runs pykernels GEMMs per step.

    Same constructor (input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None), parameters
    and state_dict keys; forward(input, hx=None) -> (output, hn) as torch's, also for a
    PackedSequence input (handled as LSTM / GRU do, see the module docstring).

    There is NO fused Elman-RNN kernel: per layer and direction, the input projection of all T
    steps is one ``pykernels.ops.linear`` (x as [T*B, I], with b_ih + b_hh folded into its
    bias), then every step is one ``pykernels.ops.linear(h, weight_hh)`` ([B, H] @ [H, H]) with
    the add and the nonlinearity in torch: 1 + T GEMM calls and ~3 T torch ops per layer and
    direction, forward and backward through autograd. With a PackedSequence, step t runs only
    the batch_sizes[t] rows still inside their sequence (the others keep their state and
    output 0). Layers, directions and inter-layer dropout are composed as in LSTM / GRU.

    Raises:
        NotImplementedError: proj_size other than 0 (projections exist for LSTM only; torch.nn.RNN
            raises ValueError for it).
        ValueError: an unknown nonlinearity (as torch); the ValueError / RuntimeError torch raises
            for inconsistent input and hx (same messages); otherwise see ``pykernels.ops.linear``.
    """

    def __init__(self, *args, **kwargs):
        proj_size = kwargs.pop("proj_size", 0)
        if proj_size:
            raise NotImplementedError(f"pykernels.nn.RNN: proj_size={proj_size} is not supported (projections "
                                      "exist for LSTM only)")
        super().__init__(*args, **kwargs)

    def forward(self, input, hx=None):
        self._update_flat_weights()
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
                self.check_forward_args(data, hx, batch_sizes)
            else:
                self.check_input(data, batch_sizes)
            x = _unpack(data, batch_sizes)                           # [T, B, I], sorted batch order
            out, hn = self._run_layers(x, hx, batch_sizes.tolist())
            output = PackedSequence(_pack(out, batch_sizes), batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hn, unsorted_indices)
        if input.dim() not in (2, 3):
            raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D "
                                       "tensor")
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if hx is not None:
            self.check_forward_args(input, hx, None)
        else:
            self.check_input(input, None)
        x = input.transpose(0, 1) if self.batch_first else input    # [T, B, I], a view
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, hn = self._run_layers(x, hx, None)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not is_batched:
            out, hn = out.squeeze(batch_dim), hn.squeeze(1)
        return out, hn

    def _run_layers(self, x: Tensor, h0: Optional[Tensor], batch_sizes: Optional[List[int]]
                    ) -> Tuple[Tensor, Tensor]:
        """x [T, B, I], h0 [L*D, B, H] or None -> output [T, B, D*H], hn [L*D, B, H]."""
        relu = self.nonlinearity == "relu"
        if h0 is None:
            D = 2 if self.bidirectional else 1
            h0 = x.new_zeros((self.num_layers * D, x.shape[1], self.hidden_size))

        def direction(x, k, w_ih, w_hh, b_ih, b_hh, reverse):
            y, h = _rnn_direction(x, h0[k], w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes)
            return y, (h,)

        out, (hn,) = _layers(self, x, direction)
        return out, hn
