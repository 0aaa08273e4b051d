"""Layers with forward and explicit backward passes (PyTorch's names and layouts)."""
from . import functional, init, utils
from .container import ModuleDict, ModuleList, ParameterDict, ParameterList, Residual, Sequential
from .conv import Conv1d, Conv2d, ConvTranspose2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d
from .activation import (ELU, GELU, Heaviside, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Sign, SiLU, Softmax,
                         Softplus, Softsign, Tanh)
from .flatten import Flatten
from .linear import Linear
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HingeLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss,
                   MultiMarginLoss, NLLLoss, PerceptronLoss, SmoothL1Loss)
from .module import Module, Parameter, enable_grad, no_grad
from .dropout import Dropout, Dropout1d, Dropout2d
from .embedding import Embedding
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .normalization import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from .attention import MultiheadAttention, ScaledDotProductAttention
from .transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                          TransformerEncoderLayer, generate_square_subsequent_mask)
from . import modules  # noqa: E402 (torch.nn.modules' layout, after the classes it lists)
