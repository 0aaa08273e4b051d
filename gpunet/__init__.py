"""gpunet: neural networks on NVIDIA GPUs with hand-written CUDA kernels, a
CuPy fallback and a NumPy reference backend. See README.md."""
from . import autograd, checks, dtypes, functional, nn, optim, perceptron, regularization
from .autograd import Tensor, as_tensor, from_numpy, tensor
from .autograd.ops import *  # noqa: F401,F403 (gpunet.exp, gpunet.max, ...: the ops' __all__)
from .autograd.shape import *  # noqa: F401,F403 (gpunet.cat, gpunet.zeros, ...)
from .autograd.extras import *  # noqa: F401,F403 (gpunet.sin, gpunet.tril, gpunet.topk, ...)
from .backend import Backend, asarray, backend_of, backends, get_backend, set_default_device, synchronize, to_numpy
from .checks import set_finite_checks
from .dtypes import bfloat16, float16, float32, float64, half
from .gradcheck import gradcheck
from .interop import from_dlpack, to_dlpack
from .nn.module import enable_grad, get_default_dtype, is_grad_enabled, no_grad, set_default_dtype
from .random import Generator, manual_seed
from .serialization import load, save
from . import amp, data, train, utils
from . import accelerator, cuda, onnx
from .devices import device, get_default_device
from .dtype_names import *  # noqa: F401,F403 (gpunet.float32, gpunet.long, ..., LongTensor: torch's names)
from .train import evaluate, fit

__version__ = "0.1.0"
