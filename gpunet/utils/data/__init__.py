"""torch.utils.data's names over gpunet.data: `from gpunet.utils.data import
DataLoader, TensorDataset, random_split`."""
from ...data.collate import default_collate
from ...data.dataset import DataLoader, Dataset, Subset, TensorDataset, random_split
from ...data.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler

__all__ = ["BatchSampler", "DataLoader", "Dataset", "RandomSampler", "Sampler", "SequentialSampler", "Subset",
           "SubsetRandomSampler", "TensorDataset", "default_collate", "random_split"]
