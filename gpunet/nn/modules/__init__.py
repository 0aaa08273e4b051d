"""torch.nn.modules' submodule names (activation, container, linear, rnn,
sparse, transformer, ...), each holding gpunet's classes of that family, for
code that names classes by their full torch path, e.g. the allow-list of a
weights_only load: gpunet.nn.modules.linear.Linear is gpunet.nn.Linear."""
import sys
import types

from .. import activation as _activation, attention as _attention, container as _container, conv as _conv, \
    dropout as _dropout, embedding as _embedding, flatten as _flatten, linear as _linear, loss as _loss, \
    module as _module, normalization as _normalization, pooling as _pooling, rnn as _rnn, transformer as _transformer


class NonDynamicallyQuantizableLinear(_linear.Linear):
    """torch's name for the output projection class of MultiheadAttention (gpunet's uses Linear)."""


# torch.nn.modules.<name> -> the gpunet modules holding those classes
_LAYOUT = {
    "activation": (_activation, _attention),  # torch keeps MultiheadAttention among the activations
    "container": (_container,), "conv": (_conv,), "dropout": (_dropout,), "flatten": (_flatten,),
    "linear": (_linear,), "loss": (_loss,), "module": (_module,), "normalization": (_normalization,),
    "batchnorm": (_normalization,), "pooling": (_pooling,), "rnn": (_rnn,), "sparse": (_embedding,),
    "transformer": (_transformer,),
}


def _submodule(name, sources):
    mod = types.ModuleType(f"{__name__}.{name}", f"torch.nn.modules.{name}'s classes, from gpunet.nn")
    for src in sources:
        for attr, value in vars(src).items():
            if isinstance(value, type) and value.__module__ == src.__name__:
                setattr(mod, attr, value)
    sys.modules[mod.__name__] = mod
    return mod


for _name, _sources in _LAYOUT.items():
    globals()[_name] = _submodule(_name, _sources)
linear.NonDynamicallyQuantizableLinear = NonDynamicallyQuantizableLinear  # noqa: F821 (made just above)

__all__ = sorted(_LAYOUT) + ["NonDynamicallyQuantizableLinear"]
