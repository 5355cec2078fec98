"""Modules: subclasses of their torch.nn counterparts with the same constructor arguments,
parameters and state_dict keys, whose forward runs pykernels ops."""
from .linear import Linear

__all__ = ["Linear"]
