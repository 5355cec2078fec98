"""VGG (Simonyan & Zisserman 2014) configurations A, B, D, E (VGG 11, 13, 16, 19), with or
without batch norm, on pykernels.nn.Conv2d, MaxPool2d, AdaptiveAvgPool2d and Linear.

`features` is one Sequential of 3x3 convolutions (padding 1), each followed by [BatchNorm2d] and
ReLU, with a MaxPool2d(2, 2) closing each of the five stages. VGG16 on a [B, 3, 224, 224] input:

    stage 1: 2 x conv 64,  pool   [B, 64, 112, 112]
    stage 2: 2 x conv 128, pool   [B, 128, 56, 56]
    stage 3: 3 x conv 256, pool   [B, 256, 28, 28]
    stage 4: 3 x conv 512, pool   [B, 512, 14, 14]
    stage 5: 3 x conv 512, pool   [B, 512, 7, 7]
    avgpool: AdaptiveAvgPool2d(7) [B, 512, 7, 7]
    flatten                       [B, 25088]
    classifier: Linear(25088, 4096) ReLU Dropout,   [B, 4096]
                Linear(4096, 4096) ReLU Dropout,    [B, 4096]
                Linear(4096, num_classes)           [B, num_classes]  (logits)

VGG11 has 1, 1, 2, 2, 2 convolutions per stage, VGG13 2, 2, 2, 2, 2, VGG19 2, 2, 4, 4, 4. The
smallest input is 32 x 32 (five halvings to 1 x 1; avgpool then repeats it to 7 x 7).

Module structure, state_dict keys and shapes (features.N numbered over conv, [bn,] relu and pool
modules; classifier.{0,3,6}) and the weight initialisation (convolutions kaiming-normal, fan_out,
zero bias; batch norm weight 1, bias 0; linear N(0, 0.01), zero bias) are torchvision's, so its
vgg11 / vgg11_bn / vgg16 / vgg16_bn checkpoints load. `VGG.with_torch_layers(...)` is the twin.
"""

import torch

from ._base import TorchTwin, check_positive_ints, resolve_layers

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]

# output channels of each 3x3 convolution, "M" a 2x2 max-pool: configurations A, B, D, E
_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(TorchTwin, torch.nn.Module):
    """VGG of the given depth with torchvision's layout (features / avgpool / classifier).

    Args:
        depth: 11, 13, 16 or 19 (configurations A, B, D, E).
        batch_norm: put a BatchNorm2d between each convolution and its ReLU.
        num_classes: number of output logits.
        in_channels: channels of the [B, C, H, W] input (H, W >= 32).
        dropout: probability of the two torch.nn.Dropout layers of the classifier.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: an unknown depth, num_classes or in_channels not a positive int, dropout
            outside [0, 1]; from forward, an input smaller than 32 x 32.
    """

    min_image_size = 32

    def __init__(self, depth=16, batch_norm=False, num_classes=1000, in_channels=3, dropout=0.5, *,
                 layers=None, device=None, dtype=None):
        super().__init__()
        if not isinstance(depth, int) or isinstance(depth, bool) or depth not in _CONFIGS:
            raise ValueError(f"depth must be one of {sorted(_CONFIGS)}, got {depth!r}")
        check_positive_ints(num_classes=num_classes, in_channels=in_channels)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.depth, self.batch_norm = depth, bool(batch_norm)

        features, channels = [], in_channels
        for v in _CONFIGS[depth]:
            if v == "M":
                features.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            features.append(nn.Conv2d(channels, v, kernel_size=3, padding=1, **fk))
            if batch_norm:
                features.append(torch.nn.BatchNorm2d(v, **fk))
            features.append(torch.nn.ReLU(inplace=True))
            channels = v
        self.features = torch.nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = torch.nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096, **fk), torch.nn.ReLU(inplace=True), torch.nn.Dropout(p=dropout),
            nn.Linear(4096, 4096, **fk), torch.nn.ReLU(inplace=True), torch.nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes, **fk),
        )

        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0.0, 0.01)
                torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        if x.dim() != 4 or min(x.shape[-2:]) < self.min_image_size:
            raise ValueError(f"x must be [B, C, H, W] with H, W >= {self.min_image_size} for VGG, "
                             f"got {list(x.shape)}")
        x = self.avgpool(self.features(x))     # [B, 512, 7, 7]
        return self.classifier(x.flatten(1))   # [B, num_classes]

    def extra_repr(self):
        return f"depth={self.depth}, batch_norm={self.batch_norm}"


def vgg11(**kwargs):
    """VGG 11 (configuration A) without batch norm; keyword arguments as VGG's."""
    return VGG(11, False, **kwargs)


def vgg11_bn(**kwargs):
    """VGG 11 (configuration A) with batch norm; keyword arguments as VGG's."""
    return VGG(11, True, **kwargs)


def vgg16(**kwargs):
    """VGG 16 (configuration D) without batch norm; keyword arguments as VGG's."""
    return VGG(16, False, **kwargs)


def vgg16_bn(**kwargs):
    """VGG 16 (configuration D) with batch norm; keyword arguments as VGG's."""
    return VGG(16, True, **kwargs)
