"""ResNet (He et al. 2015; torchvision's v1.5: a Bottleneck strides in its 3x3 convolution) on
pykernels.nn.Conv2d, MaxPool2d, AdaptiveAvgPool2d and Linear; batch norm and ReLU are torch.nn's.
Shapes for a [B, 3, 224, 224] input (e = block.expansion: 1 for BasicBlock, 4 for Bottleneck):

    conv1:   Conv2d(C, 64, 7, stride 2, pad 3, no bias) bn1 ReLU   [B, 64, 112, 112]
    maxpool: MaxPool2d(3, stride 2, pad 1)                         [B, 64, 56, 56]
    layer1:  blocks[0] blocks, 64 planes                           [B, 64e, 56, 56]
    layer2:  blocks[1] blocks, 128 planes, the first strides 2     [B, 128e, 28, 28]
    layer3:  blocks[2] blocks, 256 planes, the first strides 2     [B, 256e, 14, 14]
    layer4:  blocks[3] blocks, 512 planes, the first strides 2     [B, 512e, 7, 7]
    avgpool: AdaptiveAvgPool2d(1), flatten                         [B, 512e]
    fc:      Linear(512e, num_classes)                             [B, num_classes]  (logits)

    BasicBlock (x [B, Cin, H, W], stride s):
        conv1 3x3 stride s -> bn1 -> ReLU -> conv2 3x3 -> bn2       [B, planes, H/s, W/s]
        + x, or + downsample(x) = bn(conv 1x1 stride s)(x) when s != 1 or Cin != planes; ReLU
    Bottleneck:
        conv1 1x1 -> bn1 -> ReLU                                    [B, planes, H, W]
        conv2 3x3 stride s -> bn2 -> ReLU                           [B, planes, H/s, W/s]
        conv3 1x1 -> bn3                                            [B, 4 planes, H/s, W/s]
        + x or downsample(x); ReLU

resnet18 = BasicBlock [2, 2, 2, 2], resnet34 = BasicBlock [3, 4, 6, 3], resnet50 = Bottleneck
[3, 4, 6, 3]. The network halves the image five times (conv1, maxpool, layer2-4); it runs on any
H, W >= 1 (32 x 32 reaches layer4 at 1 x 1).

Module structure, state_dict keys and shapes (conv1, bn1, layer1.0.conv1, ...,
layer2.0.downsample.{0,1}, fc) and the weight initialisation (convolutions kaiming-normal,
fan_out, ReLU gain; batch norm weight 1, bias 0; fc torch's default) are torchvision's, so its
resnet18 / 34 / 50 checkpoints load. `ResNet.with_torch_layers(...)` is the torch.nn twin.
"""

import torch

from ._base import TorchTwin, check_positive_ints, resolve_layers

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


class BasicBlock(TorchTwin, torch.nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (ResNet 18 / 34).

    Args:
        inplanes: input channels.
        planes: output channels (expansion 1).
        stride: stride of the first convolution (and of the downsample).
        downsample: the module applied to the input of the residual sum (None: identity).
        layers, device, dtype: as ResNet's.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, layers=None, device=None,
                 dtype=None):
        super().__init__()
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False, **fk)
        self.bn1 = torch.nn.BatchNorm2d(planes, **fk)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False, **fk)
        self.bn2 = torch.nn.BatchNorm2d(planes, **fk)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)  # [B, planes, H/s, W/s]
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(TorchTwin, torch.nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with batch norm and a residual (ResNet 50+).

    Args:
        inplanes: input channels.
        planes: channels of the 3x3 convolution; the block outputs 4 * planes.
        stride: stride of the 3x3 convolution (and of the downsample).
        downsample: the module applied to the input of the residual sum (None: identity).
        layers, device, dtype: as ResNet's.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, layers=None, device=None,
                 dtype=None):
        super().__init__()
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False, **fk)
        self.bn1 = torch.nn.BatchNorm2d(planes, **fk)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False, **fk)
        self.bn2 = torch.nn.BatchNorm2d(planes, **fk)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False, **fk)
        self.bn3 = torch.nn.BatchNorm2d(out, **fk)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)  # [B, 4 planes, H/s, W/s]
        out = self.relu(self.bn1(self.conv1(x)))    # [B, planes, H, W]
        out = self.relu(self.bn2(self.conv2(out)))  # [B, planes, H/s, W/s]
        out = self.bn3(self.conv3(out))             # [B, 4 planes, H/s, W/s]
        out += identity
        return self.relu(out)


class ResNet(TorchTwin, torch.nn.Module):
    """ResNet with torchvision's layout (conv1 / bn1 / maxpool / layer1-4 / avgpool / fc).

    Args:
        block: BasicBlock or Bottleneck (or a subclass).
        blocks: the number of blocks in each of the four stages, e.g. [2, 2, 2, 2] (torchvision
            calls this `layers`; here `layers` is the layer namespace).
        num_classes: number of output logits.
        in_channels: channels of the [B, C, H, W] input.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: block not BasicBlock / Bottleneck, blocks not four positive ints, num_classes
            or in_channels not a positive int.
    """

    def __init__(self, block, blocks, num_classes=1000, in_channels=3, *, layers=None, device=None,
                 dtype=None):
        super().__init__()
        if not (isinstance(block, type) and issubclass(block, (BasicBlock, Bottleneck))):
            raise ValueError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if (not isinstance(blocks, (list, tuple)) or len(blocks) != 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in blocks)):
            raise ValueError(f"blocks must be four positive ints (blocks per stage), got {blocks!r}")
        check_positive_ints(num_classes=num_classes, in_channels=in_channels)
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False, **fk)
        self.bn1 = torch.nn.BatchNorm2d(64, **fk)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, blocks[0], 1, layers, fk)
        self.layer2 = self._make_layer(block, 128, blocks[1], 2, layers, fk)
        self.layer3 = self._make_layer(block, 256, blocks[2], 2, layers, fk)
        self.layer4 = self._make_layer(block, 512, blocks[3], 2, layers, fk)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes, **fk)

        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, count, stride, layers, fk):
        """One stage: `count` blocks, the first with `stride` and, where the shape changes, a
        downsample (1x1 conv with that stride + batch norm) on its residual path."""
        nn, out = resolve_layers(layers), planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = torch.nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False, **fk),
                torch.nn.BatchNorm2d(out, **fk),
            )
        stage = [block(self.inplanes, planes, stride, downsample, layers=layers, **fk)]
        self.inplanes = out
        stage += [block(out, planes, layers=layers, **fk) for _ in range(1, count)]
        return torch.nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        x = self.layer1(x)                                     # [B, 64e, H/4, W/4]
        x = self.layer2(x)                                     # [B, 128e, H/8, W/8]
        x = self.layer3(x)                                     # [B, 256e, H/16, W/16]
        x = self.layer4(x)                                     # [B, 512e, H/32, W/32]
        return self.fc(self.avgpool(x).flatten(1))            # [B, num_classes]


def resnet18(**kwargs):
    """ResNet 18: BasicBlock, [2, 2, 2, 2]; keyword arguments as ResNet's."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs):
    """ResNet 34: BasicBlock, [3, 4, 6, 3]; keyword arguments as ResNet's."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs):
    """ResNet 50: Bottleneck, [3, 4, 6, 3]; keyword arguments as ResNet's."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)
