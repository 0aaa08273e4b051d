"""torchvision.datasets.CIFAR10, MNIST and FashionMNIST without downloads.

Each reads the real files when they are under `root` (CIFAR-10's binary
version, root/cifar-10-batches-bin; MNIST's IDX files in root/MNIST/raw,
Fashion-MNIST's in root/FashionMNIST/raw, gzipped or not). Otherwise it says
so once and serves synthetic data of the same shapes, sizes and types: uint8
images that a network can learn to classify (CIFAR: gratings whose
orientation and colour give the class; MNIST/Fashion-MNIST: a fixed random
pattern per class, shifted and noisy). `download=True` never downloads: it is
accepted and leads to the same fallback. GPUNET_SYNTHETIC_SAMPLES="N" or
"N,M" shrinks the synthetic train split to N samples and the test split to M
(N when only N is given), for quick runs.

Samples are (image, target) as torchvision's: the image, in place of a PIL
image, is a uint8 NumPy array (H, W) or (H, W, 3), which
gpunet.vision.transforms.ToTensor turns into a float Tensor; target is an int.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..data.cifar import load_cifar10
from ..data.dataset import Dataset
from ..data.idx import load_mnist
from ..data.synthetic import synthetic_cifar

__all__ = ["CIFAR10", "FashionMNIST", "MNIST"]

_announced = set()


def synthetic_sizes(train_size: int, test_size: int) -> tuple[int, int]:
    """(train, test) sample counts for synthetic data, after GPUNET_SYNTHETIC_SAMPLES."""
    raw = os.environ.get("GPUNET_SYNTHETIC_SAMPLES", "").strip()
    if not raw:
        return train_size, test_size
    try:
        parts = [int(p) for p in raw.split(",")]
        if len(parts) not in (1, 2) or min(parts) <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"GPUNET_SYNTHETIC_SAMPLES: expected 'N' or 'N,M' (positive sample counts), got {raw!r}") \
            from None
    return parts[0], parts[-1]


def _announce(name: str, why: str):
    if name not in _announced:
        _announced.add(name)
        print(f"gpunet.vision: {name}: {why}; using SYNTHETIC data of the same shapes (not the real dataset)",
              file=sys.stderr)


class _VisionDataset(Dataset):
    def __init__(self, root, train: bool = True, transform=None, target_transform=None, download: bool = False):
        self.root = os.path.expanduser(str(root))
        self.train = bool(train)
        self.transform, self.target_transform = transform, target_transform
        try:
            images, targets = self._load_real()
            self.synthetic = False
        except FileNotFoundError as e:
            _announce(type(self).__name__, f"no local copy ({e})" + ("; downloads are not possible here"
                                                                     if download else ""))
            n = synthetic_sizes(*self.sizes)[0 if self.train else 1]
            images, targets = self._synthetic(n, seed=0 if self.train else 1)
            self.synthetic = True
        self.data, self.targets = images, [int(t) for t in targets]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self):
        kind = "synthetic" if self.synthetic else self.root
        return f"Dataset {type(self).__name__}\n    Number of datapoints: {len(self)}\n    Split: " \
               f"{'Train' if self.train else 'Test'}\n    Data: {kind}"


class CIFAR10(_VisionDataset):
    """CIFAR-10: data uint8 (N, 32, 32, 3), targets ints 0..9."""
    sizes = (50000, 10000)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def _load_real(self):
        images, labels = load_cifar10(self.root, self.train)
        return np.round(images * 255).astype(np.uint8).transpose(0, 2, 3, 1).copy(), labels

    @staticmethod
    def _synthetic(n, seed):
        images, labels = synthetic_cifar(n, seed=seed)
        return np.round(images * 255).astype(np.uint8).transpose(0, 2, 3, 1).copy(), labels


class MNIST(_VisionDataset):
    """MNIST: data uint8 (N, 28, 28), targets ints 0..9."""
    sizes = (60000, 10000)
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
               "8 - eight", "9 - nine"]
    _pattern_seed = 28

    def _load_real(self):
        images, labels = load_mnist(os.path.join(self.root, type(self).__name__, "raw"),
                                    "train" if self.train else "test")
        return np.round(images[:, 0] * 255).astype(np.uint8), labels

    @classmethod
    def _synthetic(cls, n, seed):
        """A fixed smooth random 20x20 pattern per class (the same for both
        splits), placed at a random offset of up to 4 pixels, plus noise."""
        patterns = np.random.default_rng(cls._pattern_seed).random((10, 5, 5))
        patterns = np.kron(patterns, np.ones((4, 4)))  # 20x20 blocks
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n)
        images = np.zeros((n, 28, 28), dtype=np.float32)
        dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
        for k in range(n):
            images[k, dy[k]:dy[k] + 20, dx[k]:dx[k] + 20] = patterns[labels[k]]
        images += rng.normal(0, 0.15, images.shape).astype(np.float32)
        return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8), labels


class FashionMNIST(MNIST):
    """Fashion-MNIST: the shapes of MNIST, ten kinds of clothing."""
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    _pattern_seed = 1428
