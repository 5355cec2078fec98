"""AlexNet (torchvision's single-tower variant) on pykernels.nn.Conv2d, MaxPool2d,
AdaptiveAvgPool2d and Linear. Shapes for a [B, 3, 224, 224] input:

    features.0:  Conv2d(C, 64, 11, stride 4, pad 2) ReLU   [B, 64, 55, 55]
    features.2:  MaxPool2d(3, 2)                           [B, 64, 27, 27]
    features.3:  Conv2d(64, 192, 5, pad 2) ReLU            [B, 192, 27, 27]
    features.5:  MaxPool2d(3, 2)                           [B, 192, 13, 13]
    features.6:  Conv2d(192, 384, 3, pad 1) ReLU           [B, 384, 13, 13]
    features.8:  Conv2d(384, 256, 3, pad 1) ReLU           [B, 256, 13, 13]
    features.10: Conv2d(256, 256, 3, pad 1) ReLU           [B, 256, 13, 13]
    features.12: MaxPool2d(3, 2)                           [B, 256, 6, 6]
    avgpool:     AdaptiveAvgPool2d(6)                      [B, 256, 6, 6]
    flatten                                                [B, 9216]
    classifier:  Dropout, Linear(9216, 4096) ReLU,         [B, 4096]
                 Dropout, Linear(4096, 4096) ReLU,         [B, 4096]
                 Linear(4096, num_classes)                 [B, num_classes]  (logits)

The smallest input is 63 x 63 (conv1 -> 15, pools -> 7 -> 3 -> 1; avgpool then repeats the 1 x 1
map to 6 x 6). Module structure, state_dict keys and shapes and the weight initialisation
(torch's layer defaults) are torchvision's `alexnet()`, so its checkpoints load; 61,100,840
parameters at num_classes=1000. `AlexNet.with_torch_layers(...)` is the torch.nn twin.
"""

import torch

from ._base import TorchTwin, check_positive_ints, resolve_layers

__all__ = ["AlexNet"]


class AlexNet(TorchTwin, torch.nn.Module):
    """AlexNet with torchvision's layer layout (features / avgpool / classifier).

    Args:
        num_classes: number of output logits.
        in_channels: channels of the [B, C, H, W] input (H, W >= 63).
        dropout: probability of the two torch.nn.Dropout layers of the classifier.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: num_classes or in_channels not a positive int, dropout outside [0, 1];
            from forward, an input smaller than 63 x 63.
    """

    min_image_size = 63

    def __init__(self, num_classes=1000, in_channels=3, dropout=0.5, *, layers=None, device=None,
                 dtype=None):
        super().__init__()
        check_positive_ints(num_classes=num_classes, in_channels=in_channels)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        relu = lambda: torch.nn.ReLU(inplace=True)  # noqa: E731
        self.features = torch.nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2, **fk), relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2, **fk), relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1, **fk), relu(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, **fk), relu(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, **fk), relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096, **fk), relu(),
            torch.nn.Dropout(p=dropout),
            nn.Linear(4096, 4096, **fk), relu(),
            nn.Linear(4096, num_classes, **fk),
        )

    def forward(self, x):
        if x.dim() != 4 or min(x.shape[-2:]) < self.min_image_size:
            raise ValueError(f"x must be [B, C, H, W] with H, W >= {self.min_image_size} for AlexNet, "
                             f"got {list(x.shape)}")
        x = self.avgpool(self.features(x))     # [B, 256, 6, 6]
        return self.classifier(x.flatten(1))   # [B, num_classes]
