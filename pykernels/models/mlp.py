"""MLP: the seed classifier 784 -> 128 -> ReLU -> 10 (MNIST digits), from pykernels.nn.Linear.

    x [B, in_features] (or [B, 1, 28, 28], flattened)
      -> fc1: Linear(in_features, hidden)  -> ReLU    [B, hidden]
      -> fc2: Linear(hidden, num_classes)             [B, num_classes]  (logits)

`MLP.with_torch_layers(...)` builds the same network from torch.nn.Linear (same parameter names and
shapes, so state_dicts load both ways): the twin of the parity tests and benchmarks.
"""

import torch

from ._base import TorchTwin, resolve_layers

__all__ = ["MLP"]


class MLP(TorchTwin, torch.nn.Module):
    """Two-layer perceptron: fc1 -> ReLU -> fc2.

    Args:
        in_features: input features per sample (784 for 28x28 digits); inputs with more than
            two dims are flattened from dim 1.
        hidden: width of the hidden layer.
        num_classes: number of output logits.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.
    """

    def __init__(self, in_features=784, hidden=128, num_classes=10, *, layers=None, device=None, dtype=None):
        super().__init__()
        nn = resolve_layers(layers)
        self.in_features, self.hidden, self.num_classes = in_features, hidden, num_classes
        self.fc1 = nn.Linear(in_features, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, num_classes, device=device, dtype=dtype)

    def forward(self, x):
        if x.dim() > 2:
            x = x.flatten(1)  # [B, 1, 28, 28] -> [B, 784]
        return self.fc2(torch.relu(self.fc1(x)))  # [B, num_classes]

    def extra_repr(self):
        return f"{self.in_features} -> {self.hidden} -> ReLU -> {self.num_classes}"
