"""The seeds' two small digit classifiers on pykernels.nn.Conv2d, MaxPool2d and Linear.

SeedCNN: the classic PyTorch MNIST example net (without its dropouts; returns logits), input
[B, C, 28, 28]:

    conv1: Conv2d(C, 10, 5)      [B, 10, 24, 24]
    pool:  MaxPool2d(2) -> ReLU  [B, 10, 12, 12]
    conv2: Conv2d(10, 20, 5)     [B, 20, 8, 8]
    pool:  MaxPool2d(2) -> ReLU  [B, 20, 4, 4]
    flatten                      [B, 320]
    fc1:   Linear(320, 50) ReLU  [B, 50]
    fc2:   Linear(50, classes)   [B, num_classes]  (logits)

SmallCNN: the Keras-style one, input [B, C, S, S] (S = image_size, 28 for MNIST, S >= 4):

    conv:  Conv2d(C, 32, 3) ReLU          [B, 32, S-2, S-2]
    pool:  MaxPool2d(2)                   [B, 32, P, P]        P = (S-2) // 2  (13 for 28)
    flatten                               [B, 32*P*P]          (5408 for 28)
    fc1:   Linear(32*P*P, 64) ReLU        [B, 64]
    fc2:   Linear(64, classes)            [B, num_classes]  (logits)

`X.with_torch_layers(...)` builds the same net from torch.nn (same state_dict): the twin of the
parity tests (tests/test_models_vision.py), the demo and bench/bench_models.py.
"""

import torch

from ._base import TorchTwin, check_positive_ints, resolve_layers

__all__ = ["SeedCNN", "SmallCNN"]


class SeedCNN(TorchTwin, torch.nn.Module):
    """The seed article's MNIST CNN: conv 5x5 (10) -> pool -> conv 5x5 (20) -> pool -> fc 50 -> fc.

    Args:
        in_channels: channels of the [B, C, 28, 28] input.
        num_classes: number of output logits.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: in_channels or num_classes not a positive int.
    """

    image_size = 28  # fc1 takes 20 * 4 * 4 = 320 features: the input must be 28 x 28

    def __init__(self, in_channels=1, num_classes=10, *, layers=None, device=None, dtype=None):
        super().__init__()
        check_positive_ints(in_channels=in_channels, num_classes=num_classes)
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_channels, 10, kernel_size=5, **fk)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5, **fk)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(320, 50, **fk)
        self.fc2 = nn.Linear(50, num_classes, **fk)

    def forward(self, x):
        x = torch.relu(self.pool(self.conv1(x)))  # [B, 10, 12, 12]
        x = torch.relu(self.pool(self.conv2(x)))  # [B, 20, 4, 4]
        x = torch.relu(self.fc1(x.flatten(1)))    # [B, 50]
        return self.fc2(x)                         # [B, num_classes]


class SmallCNN(TorchTwin, torch.nn.Module):
    """Keras-style CNN: conv 3x3 (32) ReLU -> max-pool 2 -> dense 64 ReLU -> dense num_classes.

    Args:
        in_channels: channels of the [B, C, image_size, image_size] input.
        num_classes: number of output logits.
        image_size: side of the square input (>= 4, so that the pooled map is at least 1 x 1).
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: an argument that is not a positive int, or image_size < 4.
    """

    def __init__(self, in_channels=1, num_classes=10, image_size=28, *, layers=None, device=None,
                 dtype=None):
        super().__init__()
        check_positive_ints(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4 (3x3 conv then 2x2 pool), got {image_size}")
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.image_size = image_size
        side = (image_size - 2) // 2
        self.conv = nn.Conv2d(in_channels, 32, kernel_size=3, **fk)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * side * side, 64, **fk)
        self.fc2 = nn.Linear(64, num_classes, **fk)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))  # [B, 32, P, P]
        x = torch.relu(self.fc1(x.flatten(1)))   # [B, 64]
        return self.fc2(x)                        # [B, num_classes]
