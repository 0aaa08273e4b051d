"""torchtext's names for what the transformer language-model tutorial uses:
datasets.WikiText2 (local files, else a synthetic corpus, announced),
data.utils.get_tokenizer and vocab.build_vocab_from_iterator. Nothing is
downloaded."""
from . import data, datasets, vocab

__all__ = ["data", "datasets", "vocab"]
