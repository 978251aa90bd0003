"""Networks: the recipe's CIFAR ResNet-18 (with a width multiplier) and two small test networks.

Models are plain ``nn.Module`` s built from ``nn.Conv2d`` / ``nn.Linear``; :func:`build_model`
turns them Bayesian (or masked-deterministic) with :func:`ssvi.layers.bayesianize`.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .layers import bayesianize


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem (stride 1, no max-pool), [2, 2, 2, 2] BasicBlocks, avg-pool, fc.

    ``width`` scales the channel counts 64/128/256/512 (1.0 is the paper's model, 11.16M weights).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride),
                                        BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(4) on 32x32 inputs
        return self.linear(out)


class SmallCNN(nn.Module):
    """A four-conv network for quick CPU runs (32x32 inputs)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        c1, c2 = max(1, int(round(32 * width))), max(1, int(round(64 * width)))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.linear = nn.Linear(c2, num_classes)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class MLP(nn.Module):
    """A two-hidden-layer perceptron on flattened images, for the fastest tests."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_features: int = 3 * 32 * 32):
        super().__init__()
        h = max(1, int(round(256 * width)))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, h), nn.ReLU(),
                                 nn.Linear(h, h), nn.ReLU(), nn.Linear(h, num_classes))

    def forward(self, x):
        return self.net(x)


ARCHS = {"resnet18": ResNet18, "small_cnn": SmallCNN, "mlp": MLP}


def build_model(name: str, num_classes: int = 10, width: float = 1.0, *, bayesian: bool = True,
                masked: bool = True, **layer_kw) -> nn.Module:
    """Build ``name`` and convert its Conv2d/Linear layers.

    bayesian=True: mean-field Gaussian layers (SSVI, dense VI). bayesian=False and masked=True:
    deterministic masked layers (RigL). masked=False: the plain deterministic network.
    """
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHS)}")
    model = ARCHS[name](num_classes=num_classes, width=width)
    if bayesian:
        return bayesianize(model, **layer_kw)
    if masked:
        return bayesianize(model, deterministic=True)
    return model
