"""Standard architectures built only from pykernels.nn layers (plus torch.nn's batch norm, layer
norm, activations and dropout, which have no pykernels kernel).

Every model takes a keyword `layers` (default pykernels.nn); `Model.with_torch_layers(...)` builds
the same architecture from torch.nn, with the same state_dict keys: the twin the parity tests
(tests/test_models_*.py), the demo and bench/bench_models.py compare against. AlexNet, VGG,
ResNet and DenseNet have torchvision's module structure and state_dict keys.
"""

from .alexnet import AlexNet
from .cnn import SeedCNN, SmallCNN
from .dcgan import DCGANDiscriminator, DCGANGenerator
from .densenet import DenseNet, densenet121
from .mlp import MLP
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .rnn import RNNClassifier
from .transformer import TransformerEncoder, TransformerEncoderLayer, ViT
from .vgg import VGG, vgg11, vgg11_bn, vgg16, vgg16_bn

__all__ = ["MLP", "SeedCNN", "SmallCNN", "AlexNet", "VGG", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn",
           "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "DenseNet",
           "densenet121", "RNNClassifier", "TransformerEncoderLayer", "TransformerEncoder", "ViT",
           "DCGANGenerator", "DCGANDiscriminator"]
