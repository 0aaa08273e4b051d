"""torchtext.data: utils.get_tokenizer."""
from . import utils

__all__ = ["utils"]
