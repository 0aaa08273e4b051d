"""torch.utils.data's names over gpunet.data: `from gpunet.utils.data import
DataLoader, TensorDataset, random_split`.

The one difference from gpunet.data: this DataLoader yields gpunet.Tensors,
as torch's yields tensors, so a training loop can call `loss.backward()` on
what the model makes of a batch. With a collate_fn the batches are exactly
what it returns."""
from ...autograd.tensor import Tensor
from ...backend import Backend, backend_of, get_backend
from ...data import dataset
from ...data.collate import default_collate
from ...data.dataset import Dataset, IterableDataset, Subset, TensorDataset, map_arrays, random_split
from ...data.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler

__all__ = ["BatchSampler", "DataLoader", "Dataset", "IterableDataset", "RandomSampler", "Sampler",
           "SequentialSampler", "Subset", "SubsetRandomSampler", "TensorDataset", "dataset", "default_collate",
           "random_split"]


class DataLoader(dataset.DataLoader):
    __doc__ = dataset.DataLoader.__doc__ + """
    Under gpunet.utils.data (torch's name) the arrays of each batch arrive as
    gpunet.Tensors on the batch's backend (unless collate_fn is given)."""

    def iter_epoch(self, epoch: int, device=None):
        batches = super().iter_epoch(epoch, device)
        if self.collate_fn is not None:
            yield from batches
            return
        device = device if device is not None else self.device
        be = None if device is None else device if isinstance(device, Backend) else get_backend(device)
        for batch in batches:
            yield map_arrays(lambda a: a if isinstance(a, Tensor) else Tensor(a, be or backend_of(a)), batch)
