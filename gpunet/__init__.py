"""gpunet: neural networks on NVIDIA GPUs with hand-written CUDA kernels, a
CuPy fallback and a NumPy reference backend. See README.md."""
from . import checks, dtypes, functional, nn, optim, perceptron, regularization
from .backend import Backend, asarray, backend_of, backends, get_backend, synchronize, to_numpy
from .checks import set_finite_checks
from .dtypes import bfloat16, float16, float32, float64, half
from .gradcheck import gradcheck
from .interop import from_dlpack, to_dlpack
from .nn.module import enable_grad, get_default_dtype, is_grad_enabled, no_grad, set_default_dtype
from .random import manual_seed
from .serialization import load, save
from . import data, train
from .train import evaluate, fit

__version__ = "0.1.0"
