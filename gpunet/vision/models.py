"""torchvision.models.vgg16 (the save-and-load tutorial's model): the same
layers, state-dict keys and initialisation. Pretrained weights cannot be
downloaded here: asking for them keeps the random initialisation and says so,
unless GPUNET_VGG16_WEIGHTS names a gpunet.save'd state dict to load."""
from __future__ import annotations

import os
import warnings

from .. import nn
from ..serialization import load

__all__ = ["VGG", "vgg16"]

# VGG-16 ("configuration D"): output channels of each 3x3 conv, "M" a 2x2 max pool
_CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _features(cfg):
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def vgg16(weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-16. weights="IMAGENET1K_V1" (or "DEFAULT") would be ImageNet's:
    they load from the state dict GPUNET_VGG16_WEIGHTS names, else the model
    keeps its random initialisation with a warning (no downloads here)."""
    if weights not in (None, "IMAGENET1K_V1", "DEFAULT"):
        raise ValueError(f"vgg16: weights: expected None, 'IMAGENET1K_V1' or 'DEFAULT', got {weights!r}")
    model = VGG(_features(_CFG_D), **kwargs)
    if weights is not None:
        path = os.environ.get("GPUNET_VGG16_WEIGHTS")
        if path:
            model.load_state_dict(load(path))
        else:
            warnings.warn(f"vgg16(weights={weights!r}): pretrained weights cannot be downloaded here and "
                          "GPUNET_VGG16_WEIGHTS names no local copy; the model keeps a RANDOM initialisation",
                          stacklevel=2)
    return model
