"""Automatic differentiation: gpunet.Tensor records the operations applied to
it; `loss.backward()` runs their backward functions in reverse order. Modules
called on Tensors record one node whose backward is the module's explicit
backward, so their kernels compute the gradients (see gpunet/autograd/modules.py)."""
from . import extras, ops
from .engine import Node
from .tensor import Tensor, as_tensor, backward, from_numpy, record, tensor

__all__ = ["Node", "Tensor", "as_tensor", "backward", "from_numpy", "ops", "record", "tensor"]
