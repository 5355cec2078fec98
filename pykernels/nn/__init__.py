"""Modules: subclasses of their torch.nn counterparts with the same constructor arguments,
parameters and state_dict keys, whose forward runs pykernels ops."""
from .attention import MultiheadAttention
from .conv import Conv2d, ConvTranspose2d
from .linear import Linear
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell

__all__ = ["Linear", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "MultiheadAttention", "LSTMCell", "GRUCell", "LSTM", "GRU", "RNN"]
