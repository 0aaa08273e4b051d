"""Datasets, the DataLoader, and readers for real data that works offline
(scikit-learn's digits) or from local files (MNIST/Fashion-MNIST IDX, the
CIFAR-10 binary batches, any text file), and synthetic stand-ins."""
from .cifar import load_cifar10, read_cifar10_batch, write_cifar10_batch
from .collate import default_collate
from .dataset import DataLoader, Dataset, Subset, TensorDataset, random_split
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler
from .digits import digits_splits, load_digits
from .idx import load_mnist, read_idx, read_idx_images, read_idx_labels, write_idx
from .synthetic import digit_sequences, synthetic_cifar
from .text import CharDataset
