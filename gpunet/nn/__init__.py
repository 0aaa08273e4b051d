"""Layers with forward and explicit backward passes (PyTorch's names and layouts)."""
from . import init
from .container import Residual, Sequential
from .linear import Linear
from .module import Module, Parameter, no_grad
