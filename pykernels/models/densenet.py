"""DenseNet-BC (Huang et al. 2016) on pykernels.nn.Conv2d, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d and Linear; batch norm and ReLU are torch.nn's. Shapes of densenet121
(growth k = 32, block_config (6, 12, 24, 16), 64 initial features, bn_size 4) for a
[B, 3, 224, 224] input:

    features.conv0: Conv2d(C, 64, 7, stride 2, pad 3, no bias)  norm0 relu0   [B, 64, 112, 112]
    features.pool0: MaxPool2d(3, stride 2, pad 1)                             [B, 64, 56, 56]
    features.denseblock1: 6 dense layers, each adding k channels              [B, 256, 56, 56]
    features.transition1: norm relu conv 1x1 (halves C) pool AvgPool2d(2, 2)  [B, 128, 28, 28]
    features.denseblock2: 12 layers                                           [B, 512, 28, 28]
    features.transition2                                                      [B, 256, 14, 14]
    features.denseblock3: 24 layers                                           [B, 1024, 14, 14]
    features.transition3                                                      [B, 512, 7, 7]
    features.denseblock4: 16 layers                                           [B, 1024, 7, 7]
    features.norm5: BatchNorm2d, then ReLU                                    [B, 1024, 7, 7]
    avgpool: AdaptiveAvgPool2d(1), flatten                                    [B, 1024]
    classifier: Linear(1024, num_classes)                                     [B, num_classes]

    dense layer i of a block (input: the block input and layers 1..i-1's outputs, concatenated
    along C, [B, C0 + (i-1) k, H, W]):
        norm1 relu1 conv1 1x1 -> [B, bn_size k, H, W]; norm2 relu2 conv2 3x3 pad 1 -> [B, k, H, W];
        then dropout(drop_rate) (torch.nn.functional.dropout)

Each transition halves H and W (AvgPool2d(2, 2) needs at least 2 x 2): with n blocks the map
entering the last block is (H / 4) / 2^(n-1), so the smallest input is 29 x 29 for densenet121
(32 x 32 reaches the last block at 1 x 1).

Module structure, state_dict keys and shapes and the weight initialisation (convolutions
kaiming-normal, fan_in, ReLU gain; batch norm weight 1, bias 0; classifier bias 0) are
torchvision's, so its densenet121 checkpoints load (torchvision's functional final ReLU and
average pool are the parameterless modules `relu` and `avgpool` here, which add no state_dict
keys). `DenseNet.with_torch_layers(...)` is the torch.nn twin.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F

from ._base import TorchTwin, check_positive_ints, resolve_layers

__all__ = ["DenseNet", "densenet121"]


class _DenseLayer(torch.nn.Module):
    """BN-ReLU-conv 1x1 (bn_size * growth_rate) then BN-ReLU-conv 3x3 (growth_rate)."""

    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate, nn, fk):
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = torch.nn.BatchNorm2d(num_input_features, **fk)
        self.relu1 = torch.nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, width, kernel_size=1, bias=False, **fk)
        self.norm2 = torch.nn.BatchNorm2d(width, **fk)
        self.relu2 = torch.nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False, **fk)
        self.drop_rate = float(drop_rate)

    def forward(self, features):
        x = torch.cat(features, 1)                              # [B, C0 + (i-1) k, H, W]
        x = self.conv1(self.relu1(self.norm1(x)))               # [B, bn_size k, H, W]
        x = self.conv2(self.relu2(self.norm2(x)))               # [B, k, H, W]
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class _DenseBlock(torch.nn.ModuleDict):
    """`num_layers` dense layers (denselayer1, ...), each fed every earlier output."""

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate, nn, fk):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(
                num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate, nn, fk))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # [B, C0 + num_layers k, H, W]


class _Transition(torch.nn.Sequential):
    """BN-ReLU-conv 1x1 to `num_output_features`, then AvgPool2d(2, 2)."""

    def __init__(self, num_input_features, num_output_features, nn, fk):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(num_input_features, **fk)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False, **fk)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(TorchTwin, torch.nn.Module):
    """DenseNet-BC with torchvision's layout (features.{conv0, norm0, denseblockN, transitionN,
    norm5} / classifier).

    Args:
        growth_rate: channels each dense layer adds (k).
        block_config: dense layers per block, e.g. (6, 12, 24, 16) for densenet121.
        num_init_features: output channels of conv0.
        bn_size: the 1x1 bottleneck of each dense layer has bn_size * growth_rate channels.
        drop_rate: dropout after each dense layer (torch.nn.functional.dropout).
        num_classes: number of output logits.
        in_channels: channels of the [B, C, H, W] input.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: an argument that is not a positive int (block_config: not a non-empty
            sequence of them), drop_rate outside [0, 1); from forward, an input too small for
            the transitions' pools (see min_image_size).
    """

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0.0, num_classes=1000, in_channels=3, *, layers=None, device=None,
                 dtype=None):
        super().__init__()
        check_positive_ints(growth_rate=growth_rate, num_init_features=num_init_features, bn_size=bn_size,
                            num_classes=num_classes, in_channels=in_channels)
        if (not isinstance(block_config, (list, tuple)) or not block_config
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in block_config)):
            raise ValueError(f"block_config must be a non-empty sequence of positive ints (dense layers "
                             f"per block), got {block_config!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)

        self.features = torch.nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3,
                                bias=False, **fk)),
            ("norm0", torch.nn.BatchNorm2d(num_init_features, **fk)),
            ("relu0", torch.nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(
                num_layers, channels, bn_size, growth_rate, drop_rate, nn, fk))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(channels, channels // 2, nn, fk))
                channels //= 2
        self.features.add_module("norm5", torch.nn.BatchNorm2d(channels, **fk))
        self.relu = torch.nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(channels, num_classes, **fk)
        # the last transition's AvgPool2d(2, 2) needs a 2 x 2 map, so pool0 must leave
        # 2^(n-1) for n blocks; conv0 and pool0 (each h -> floor((h - 1) / 2) + 1) leave that from
        # H >= 4 * 2^(n-1) - 3 (29 for densenet121)
        self.min_image_size = 4 * 2 ** (len(block_config) - 1) - 3

        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        if x.dim() != 4 or min(x.shape[-2:]) < self.min_image_size:
            raise ValueError(f"x must be [B, C, H, W] with H, W >= {self.min_image_size} for this "
                             f"DenseNet, got {list(x.shape)}")
        x = self.relu(self.features(x))              # [B, C_final, H/32, W/32]
        return self.classifier(self.avgpool(x).flatten(1))  # [B, num_classes]


def densenet121(**kwargs):
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 initial features; keyword arguments as
    DenseNet's."""
    return DenseNet(32, (6, 12, 24, 16), 64, **kwargs)
