"""RNNClassifier: a recurrent body (Elman RNN, LSTM or GRU) and a linear head, e.g. row-wise MNIST.

    x [B, T, I] (batch_first), or an image [B, 1, H, W] read row by row (T = H steps of I = W
    pixels: a view, no copy)
      -> rnn: RNN | LSTM | GRU(I, hidden_size, num_layers, batch_first=True, dropout, bidirectional)
         hn [L*D, B, hidden_size]                      (D = 2 when bidirectional)
      -> the top layer's final hidden state of each direction, concatenated: [B, D*hidden_size]
         (forward direction: after step T-1; reverse direction: after step 0, i.e. each
         direction's last step, having read the whole sequence)
      -> fc: Linear(D*hidden_size, num_classes)        [B, num_classes]  (logits)

The body is one pykernels.nn.LSTM / GRU (one fused sequence op per layer and direction) or
pykernels.nn.RNN (no fused kernel: one GEMM per step, see pykernels.nn.RNN).
`RNNClassifier.with_torch_layers(...)` builds the same network from torch.nn (same state_dict).
"""

import torch

from ._base import TorchTwin, resolve_layers

__all__ = ["RNNClassifier"]

_CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


class RNNClassifier(TorchTwin, torch.nn.Module):
    """Sequence classifier: rnn (RNN / LSTM / GRU, batch_first) -> last hidden state -> fc.

    Args:
        input_size: features per step I (28 for MNIST rows).
        hidden_size: hidden state size per direction.
        num_classes: number of output logits.
        cell: "rnn" (tanh Elman RNN), "lstm" or "gru".
        num_layers: stacked recurrent layers.
        bidirectional: run a reverse direction too; the head sees both final states.
        dropout: dropout between recurrent layers (training only, as torch; needs num_layers > 1).
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: an unknown ``cell``; from forward, an input that is neither [B, T, I] nor
            [B, 1, T, I] with I = input_size.
    """

    def __init__(self, input_size=28, hidden_size=128, num_classes=10, cell="lstm", num_layers=1,
                 bidirectional=False, dropout=0.0, *, layers=None, device=None, dtype=None):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell={cell!r}: expected one of {sorted(_CELLS)}")
        nn = resolve_layers(layers)
        self.cell = cell
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_directions = 2 if bidirectional else 1
        self.rnn = getattr(nn, _CELLS[cell])(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                                             dropout=dropout, bidirectional=bidirectional, device=device,
                                             dtype=dtype)
        self.fc = nn.Linear(self.num_directions * hidden_size, num_classes, device=device, dtype=dtype)

    def forward(self, x):
        if x.dim() == 4:
            if x.shape[1] != 1:
                raise ValueError(f"x: expected an image [B, 1, H, W] (one channel, read row by row), got shape "
                                 f"{tuple(x.shape)}")
            x = x.squeeze(1)                      # [B, T=H, I=W]
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected [B, T, {self.input_size}] or [B, 1, T, {self.input_size}], got shape "
                             f"{tuple(x.shape)}")
        _, hidden = self.rnn(x)
        hn = hidden[0] if self.cell == "lstm" else hidden   # [L*D, B, hidden_size]
        top = hn[-self.num_directions:]                      # [D, B, hidden_size]
        feats = top[0] if self.num_directions == 1 else torch.cat([top[0], top[1]], dim=1)  # [B, D*hidden_size]
        return self.fc(feats)                                # [B, num_classes]

    def extra_repr(self):
        return f"cell={self.cell!r}"
