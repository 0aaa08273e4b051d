"""The `--dtype {float32,bfloat16,float16}` option of the examples and of
`python -m gpunet train`: float32 trains as always, a half dtype trains in
mixed precision (gpunet.amp.autocast; float16 with a GradScaler)."""
from __future__ import annotations

from .. import dtypes

CHOICES = ("float32", "bfloat16", "float16")


def add_dtype_argument(parser):
    parser.add_argument("--dtype", choices=CHOICES, default="float32",
                        help="float32, or mixed precision through gpunet.amp.autocast in bfloat16 or float16 "
                             "(float16 with a GradScaler)")


def autocast_dtype(name):
    """The `amp=` value for fit/evaluate: None for float32, else the half dtype."""
    if name not in CHOICES:
        raise ValueError(f"dtype: expected one of {', '.join(CHOICES)}, got {name!r}")
    return None if name == "float32" else dtypes.resolve(name)
