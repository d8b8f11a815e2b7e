"""WideResNet whose parameter names match RobustBench's DMWideResNet.

Keeping DeepMind's layout (explicit 'SAME'-style padding, input normalisation inside the
model, `init_conv` / `layer` / `batchnorm` / `logits`) means our state dicts load straight
into the leaderboard's architecture, so a checkpoint can be submitted as it is.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .stem import fp32_stem


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding for a 3x3 kernel: asymmetric when striding by 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class _Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        # With a projection shortcut the pre-activation feeds both paths (DeepMind's layout).
        residual_in = activated if self.has_shortcut else x
        out = self.conv_0(_same_pad(activated, self._stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        shortcut = self.shortcut(residual_in) if self.shortcut is not None else residual_in
        return shortcut + out


class _BlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, depth: int, width: int, act: type[nn.Module],
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10 or width < 1:
            raise ValueError(f"WideResNet depth must be 6n+4 >= 10 and width >= 1; got depth {depth}, width {width}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))
        channels = [16, 16 * width, 32 * width, 64 * width]
        blocks = (depth - 4) // 6
        self.init_conv = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        self.layer = nn.Sequential(*[_BlockGroup(blocks, channels[i], channels[i + 1], 1 if i == 0 else 2, act)
                                     for i in range(3)])
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = act()
        self.logits = nn.Linear(channels[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """DeepMind's (and DM-Improves-AT's) initialisation: He-normal over fan-out, zero linear bias.

        Applied in module order after PyTorch's own, so a given seed gives the reference's weights.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(fp32_stem(self.init_conv, x, self.mean, self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.avg_pool2d(out, out.shape[-2:]).flatten(1))   # the reference's pooling, to the last bit
