"""Pre-activation ResNet-18/34 with RobustBench's DMPreActResNet parameter names, for the small preset."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .stem import fp32_stem
from .wideresnet import _same_pad

LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self._stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = act()
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = act()
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = stride != 1 or in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(_same_pad(x, self._stride)) if self.has_shortcut else x
        out = self.conv_2d_1(_same_pad(out, self._stride))
        return self.conv_2d_2(self.relu_1(self.batchnorm_1(out))) + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_classes: int, depth: int, act: type[nn.Module],
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if depth not in LAYOUTS:
            raise ValueError(f"PreActResNet depth must be one of {sorted(LAYOUTS)}; got {depth}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))
        self.conv_2d = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        widths = (64, 128, 256, 512)
        layers = []
        in_planes = 64
        for index, (width, count) in enumerate(zip(widths, LAYOUTS[depth])):
            stride = 1 if index == 0 else 2
            layers.append(nn.Sequential(*[_PreActBlock(in_planes if i == 0 else width, width, stride if i == 0 else 1, act)
                                          for i in range(count)]))
            in_planes = width
        self.layer_0, self.layer_1, self.layer_2, self.layer_3 = layers
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = act()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fp32_stem(self.conv_2d, x, self.mean, self.std)
        out = self.layer_3(self.layer_2(self.layer_1(self.layer_0(out))))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))
