"""torchvision's names for what the PyTorch tutorials use: datasets (CIFAR10,
MNIST, FashionMNIST read from local files, else synthetic data of the same
shapes, announced), transforms (ToTensor, Normalize, Compose, Lambda),
utils.make_grid and models.vgg16. Nothing is downloaded."""
from . import datasets, models, transforms, utils

__all__ = ["datasets", "models", "transforms", "utils"]
