"""DDPM++ (Song et al. 2021), the network of EDM's CIFAR-10 models (Karras et al. 2022, `--arch=ddpmpp`).

Written from the two papers' descriptions, and laid out so that a state_dict of NVlabs' released EDM models
(their `SongUNet` under `EDMPrecond`, keys `model.enc.32x32_block0.conv0.weight` ...) loads into it unchanged:
the names of parameters and buffers are the format, so they are the same; the code is ours.

The U-Net: a noise embedding (sinusoidal, of log(sigma)/4) plus the one-hot class (scaled by sqrt(K)) and the
augmentation labels, mapped through two SiLU layers; per resolution `num_blocks` residual blocks (GroupNorm, SiLU,
3x3 conv; the embedding added between the two convolutions; dropout before the second; the sum scaled by
sqrt(1/2)), single-head self-attention in blocks at `attn_resolutions`, average-pool down and nearest up
(the [1, 1] resampling filter), and skip connections from every encoder output into the decoder.
Weights are drawn in EDM's order with EDM's initialisers, so a seeded construction matches theirs number for number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = math.sqrt(0.5)
EPS = 1e-6


@dataclass(frozen=True)
class DDPMppSettings:
    """`diffusion.ddpmpp`: the network's size (EDM's CIFAR-10 values are the defaults)."""

    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.13
    label_dropout: float = 0.0   # share of training images whose class is hidden (classifier-free guidance)
    channel_mult_emb: int = 4


def _xavier_uniform(shape: list[int], fan_in: int, fan_out: int, gain: float) -> torch.Tensor:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), times `gain`: Glorot's initialiser, drawn from torch's RNG."""
    return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1) * gain


class Dense(nn.Module):
    """A linear layer initialised as EDM's DDPM++ (bias drawn too, then zeroed: it keeps the draw order)."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True, gain: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(_xavier_uniform([fan_out, fan_in], fan_in, fan_out, gain))
        self.bias = nn.Parameter(_xavier_uniform([fan_out], fan_in, fan_out, 0.0)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv(nn.Module):
    """A k x k convolution (k = 0: none), optionally preceded by a 2x down- or upsampling with a separable
    filter (`resample_filter`, a buffer of released checkpoints: [1, 1] gives 2x2 average pooling / nearest)."""

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = 1.0, resample: str | None = None) -> None:
        super().__init__()
        fan_in, fan_out = cin * kernel * kernel, cout * kernel * kernel
        self.resample = resample
        self.weight = nn.Parameter(_xavier_uniform([cout, cin, kernel, kernel], fan_in, fan_out, gain)) if kernel else None
        self.bias = nn.Parameter(_xavier_uniform([cout], fan_in, fan_out, 0.0)) if kernel else None
        taps = torch.tensor([1.0, 1.0])
        self.register_buffer("resample_filter", (torch.outer(taps, taps) / taps.sum() ** 2)[None, None]
                             if resample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            channels, pad = x.shape[1], (self.resample_filter.shape[-1] - 1) // 2
            kernel = self.resample_filter.to(x.dtype).expand(channels, 1, -1, -1)
            if self.resample == "up":
                x = F.conv_transpose2d(x, kernel * 4, groups=channels, stride=2, padding=pad)
            else:
                x = F.conv2d(x, kernel, groups=channels, stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)
        return x


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups, or fewer so that each holds at least 4 channels."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=EPS)


class ResBlock(nn.Module):
    """Residual block with the embedding added after the first convolution, optional resampling and attention."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float, resample: str | None = None,
                 attention: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.norm0 = group_norm(cin)
        self.conv0 = Conv(cin, cout, 3, resample=resample)
        self.affine = Dense(emb, cout)
        self.norm1 = group_norm(cout)
        self.conv1 = Conv(cout, cout, 3, gain=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.skip = Conv(cin, cout, 1, resample=resample) if cin != cout or resample else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(cout)
            self.qkv = Conv(cout, cout * 3, 1, gain=math.sqrt(0.2))
            self.proj = Conv(cout, cout, 1, gain=1e-5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(self.dropout(h))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if not self.attention:
            return x
        batch, channels, height, width = x.shape
        # qkv's output channels are interleaved (c0q, c0k, c0v, c1q, ...): the released weights' layout.
        # softmax(q^T k / sqrt(C)) v, as F.scaled_dot_product_attention computes it for 3-D inputs (the same products
        # in the same layouts, q and k each scaled by C^(-1/4)), so the numbers are the same to the bit, forward and
        # backward; written out because SDPA adds transposed copies and a masked softmax around them, 1.4-2x the time
        # of these three ops on a CPU (benchmarks/sampling_edm.py). Its fused kernels need 4-D inputs.
        q, k, v = self.qkv(self.norm2(x)).reshape(batch, channels, 3, height * width).unbind(2)
        scale = math.sqrt(1 / math.sqrt(channels))
        weights = torch.bmm((q * scale).transpose(1, 2), k * scale).softmax(dim=2)   # (B, query, key)
        out = torch.bmm(weights, v.transpose(1, 2)).transpose(1, 2)                  # (B, C, query)
        return (self.proj(out.reshape(x.shape)) + x) * SKIP_SCALE


class DDPMpp(nn.Module):
    """F_theta(x, c_noise, class, augmentation) of EDM: in and out (B, C, R, R); conditioning as one-hot rows."""

    def __init__(self, resolution: int, channels: int, num_classes: int, augment_dim: int,
                 settings: DDPMppSettings) -> None:
        super().__init__()
        s = settings
        self.label_dropout = s.label_dropout
        noise_dim, emb = s.model_channels, s.model_channels * s.channel_mult_emb
        self.noise_dim = noise_dim
        self.map_label = Dense(num_classes, noise_dim) if num_classes else None
        self.map_augment = Dense(augment_dim, noise_dim, bias=False) if augment_dim else None
        self.map_layer0 = Dense(noise_dim, emb)
        self.map_layer1 = Dense(emb, emb)

        def block(cin: int, cout: int, **kwargs: object) -> ResBlock:
            return ResBlock(cin, cout, emb, s.dropout, **kwargs)  # type: ignore[arg-type]

        self.enc = nn.ModuleDict()
        width = s.model_channels
        for level, mult in enumerate(s.channel_mult):
            res = resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv(channels, width, 3)
            else:
                self.enc[f"{res}x{res}_down"] = block(width, width, resample="down")
            for index in range(s.num_blocks):
                self.enc[f"{res}x{res}_block{index}"] = block(width, s.model_channels * mult,
                                                              attention=res in s.attn_resolutions)
                width = s.model_channels * mult
        skips = [module.out_channels if isinstance(module, ResBlock) else s.model_channels
                 for module in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(s.channel_mult))):
            res = resolution >> level
            if level == len(s.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(width, width, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(width, width)
            else:
                self.dec[f"{res}x{res}_up"] = block(width, width, resample="up")
            for index in range(s.num_blocks + 1):
                self.dec[f"{res}x{res}_block{index}"] = block(
                    width + skips.pop(), s.model_channels * mult,
                    attention=index == s.num_blocks and res in s.attn_resolutions)
                width = s.model_channels * mult
        self.dec[f"{resolution}x{resolution}_aux_norm"] = group_norm(width)
        self.dec[f"{resolution}x{resolution}_aux_conv"] = Conv(width, channels, 3, gain=1e-5)

    def embedding(self, c_noise: torch.Tensor, class_labels: torch.Tensor | None,
                  augment_labels: torch.Tensor | None) -> torch.Tensor:
        """sin/cos of c_noise at frequencies 10000^(-i/(n/2-1)), plus class and augmentation, through the MLP."""
        half = self.noise_dim // 2
        freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32, device=c_noise.device) / (half - 1))
        angles = torch.outer(c_noise, freqs.to(c_noise.dtype))
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        if self.map_label is not None and class_labels is not None:
            if self.training and self.label_dropout:
                keep = torch.rand([len(class_labels), 1], device=class_labels.device) >= self.label_dropout
                class_labels = class_labels * keep.to(class_labels.dtype)
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.weight.shape[1]))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embedding(c_noise, class_labels, augment_labels)
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, ResBlock) else module(x)
            skips.append(x)
        out = None
        for name, module in self.dec.items():
            if name.endswith("aux_norm"):
                out = module(x)
            elif name.endswith("aux_conv"):
                out = module(F.silu(out))
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out
