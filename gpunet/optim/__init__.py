"""Optimizers and learning-rate schedules with PyTorch's names, arguments,
defaults and state_dict layout (see gpunet.optim.Optimizer for how the backend
that runs an update is chosen)."""
from . import lr_scheduler
from .adagrad import Adadelta, Adagrad
from .adam import Adam, Adamax, AdamW, NAdam, RAdam
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
