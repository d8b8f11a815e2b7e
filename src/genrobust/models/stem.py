"""The classifiers' first operation, input normalisation and the first convolution, kept in float32.

Under bf16 autocast the normalised input would be rounded to bf16's 8-bit mantissa before the first convolution:
a perturbation smaller than about 1/256 of a pixel's normalised value vanishes there. Measured on a CPU, 43% of
TRADES' 0.001-scale start noise and 28% of an L2 attack step were rounded away at the first layer, so a bf16 attack
moved fewer inputs than the fp32 one it stands for. One fp32 convolution costs little; the rest of the network
still runs in bf16.
"""

from __future__ import annotations

import torch
from torch import nn


def fp32_stem(conv: nn.Conv2d, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """conv((x - mean) / std) in float32 whatever autocast is in force (its output, fp32, feeds the bf16 rest).

    On a device autocast does not know (the meta device, where FLOPs are counted) there is nothing to turn off."""
    if not torch.amp.is_autocast_available(x.device.type):
        return conv((x.float() - mean) / std)
    with torch.autocast(x.device.type, enabled=False):
        return conv((x.float() - mean) / std)
