"""VGG (Simonyan & Zisserman 2014) for 32x32 inputs, BatchNorm after every conv.

The standard CIFAR variant: the five max-pools bring 32x32 down to 1x1, so the classifier is a
single Linear on the last conv's channels.
"""

from __future__ import annotations

import torch
from torch import nn

from resexp.model_config import POOL, VGG_LAYERS, VGGDepth, scaled_channels
from resexp.models.cifar_resnet import he_init_


class VGG(nn.Module):
    def __init__(
        self, depth: VGGDepth, width: float = 1.0, in_channels: int = 3, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG_LAYERS[depth]:
            if item == POOL:
                layers.append(nn.MaxPool2d(2))
                continue
            out_channels = scaled_channels(item, width)
            # Conv bias kept (redundant before BN) so parameter counts match the public CIFAR
            # VGG-BN models (kuangliu/pytorch-cifar, torchvision vgg*_bn): VGG-16 = 14,728,266.
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        he_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))
