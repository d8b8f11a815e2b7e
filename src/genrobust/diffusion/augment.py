"""EDM's non-leaky geometric augmentation (Karras et al. 2020, ADA; used by EDM 2022, Appendix F.2).

A diffusion model trained on CIFAR-10's 50k images overfits; EDM transforms each training image with probability
p and tells the network what it did (labels, EDM's `augment_labels`). Sampling passes zero labels, so the model
draws un-augmented images: the augmentations do not "leak".

For the same torch global RNG state `AugmentPipe` gives the numbers of NVlabs/edm's training/augment.py
(commit 008a4e5; tests/test_edm_augment.py checks figures measured from it): the draws come in its order
and shapes, and the matrices are multiplied in its order (a grid one float32 ulp off moves pixels ~1e-5).
Draws, each on the images' device and only for a transform whose multiplier is > 0 (p = 0 still draws):
x-flip randint(2, [B,1,1,1]), rand([B,1,1,1]); y-flip the same; scaling randn([B]), rand([B]); rotation
rand([B]) x2; anisotropy randn([B]), rand([B]) x3 (axis, fires, axis used); translation randn([2,B]), rand([1,B]).
Only what EDM's CIFAR-10 setting uses exists: its integer rotation/translation and colour transforms
are off there (multiplier 0: no draws, no labels), so they are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

LABEL_DIM = 9   # EDM's CIFAR-10 setting: x-flip, y-flip, scale, rotation (2), anisotropy (2), translation (2)

# Symlet-6 low-pass filter (PyWavelets' Wavelet("sym6").dec_lo): orthonormal, so up- then downsampling is identity.
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)
REACH = len(SYM6) // 4   # pixels the filters reach beyond an edge, at the original resolution


@dataclass(frozen=True)
class AugmentSettings:
    """How often and how strongly each geometric transform fires (the reference's keyword names).

    A transform fires for an image with probability `p * multiplier`: EDM's x-flip multiplier 1e8 makes
    the flip's coin always tossed. A multiplier of 0 removes the transform: no draws, no labels.
    """

    p: float = 1.0                    # overall probability: EDM's `--augment` (0.12 on CIFAR-10)
    xflip: float = 0.0
    yflip: float = 0.0
    scale: float = 0.0                # isotropic scaling by 2 ** N(0, scale_std)
    rotate_frac: float = 0.0          # rotation by U(-pi, pi) * rotate_frac_max
    aniso: float = 0.0                # x * 2 ** N(0, aniso_std), y / that (about a random axis half the time)
    translate_frac: float = 0.0       # shift by N(0, translate_frac_std) image sizes, per axis
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) >= 0:   # also refuses NaN
                raise ValueError(f"augment.{field.name} must be >= 0, got {getattr(self, field.name)}")
        if self.aniso_rotate_prob > 1:
            raise ValueError(f"augment.aniso_rotate_prob must be <= 1, got {self.aniso_rotate_prob}")

    @classmethod
    def edm_cifar10(cls, p: float = 0.12) -> AugmentSettings:
        """EDM's train.py with `--augment p` (CIFAR-10: 0.12): every geometric transform on."""
        return cls(p=p, xflip=1e8, yflip=1.0, scale=1.0, rotate_frac=1.0, aniso=1.0, translate_frac=1.0)

    @property
    def geometric(self) -> bool:
        """Whether the images are resampled (even at p = 0, as in the reference: close to, not exactly, identity)."""
        return self.scale > 0 or self.rotate_frac > 0 or self.aniso > 0 or self.translate_frac > 0

    @property
    def label_dim(self) -> int:
        """One label per flip and scaling, two per rotation, anisotropy and translation that is on."""
        return ((self.xflip > 0) + (self.yflip > 0) + (self.scale > 0)
                + 2 * ((self.rotate_frac > 0) + (self.aniso > 0) + (self.translate_frac > 0)))


EDM_CIFAR10 = AugmentSettings.edm_cifar10()


def _affine(a: Tensor | float, b: Tensor | float, c: Tensor | float, d: Tensor | float,
            tx: Tensor | float = 0.0, ty: Tensor | float = 0.0, *, device: torch.device) -> Tensor:
    """Homogeneous [[a, b, tx], [c, d, ty], [0, 0, 1]]: (B, 3, 3) if an entry is per image, else (3, 3)."""
    entries = [a, b, tx, c, d, ty, 0.0, 0.0, 1.0]
    like = next((e for e in entries if isinstance(e, Tensor)), torch.zeros((), device=device))
    entries = [e if isinstance(e, Tensor) else torch.full_like(like, e) for e in entries]
    return torch.stack(entries, dim=-1).reshape(*like.shape, 3, 3)


def _rotate(angle: Tensor) -> Tensor:
    return _affine(angle.cos(), (-angle).sin(), angle.sin(), angle.cos(), device=angle.device)


def _gate(values: Tensor, probability: float, shape: list[int] | None = None,
          generator: torch.Generator | None = None) -> Tensor:
    """`values` where a fresh uniform draw (one per image) is below `probability`, else 0."""
    fires = torch.rand(shape or list(values.shape), device=values.device, generator=generator) < probability
    return torch.where(fires, values, torch.zeros_like(values))


def _taps(images: Tensor, vertical: bool) -> Tensor:
    """SYM6 as a depthwise kernel along one axis, for conv2d/conv_transpose2d with groups = channels."""
    taps = torch.tensor(SYM6, dtype=images.dtype, device=images.device)
    return taps.reshape(1, 1, *((-1, 1) if vertical else (1, -1))).repeat(images.shape[1], 1, 1, 1)


def _resample(images: Tensor, g_inv: Tensor) -> Tensor:
    """Warp: output pixel q (centred pixel coordinates) takes input point g_inv[i] @ q.

    The image is mirrored outwards far enough that no sampled point (plus the filters' reach) falls
    outside, upsampled 2x, sampled bilinearly, then downsampled 2x with the same wavelet filter: bilinear
    lookups at twice the resolution alias far less than at the image's own.
    """
    (n, c, h, w), dev = images.shape, images.device
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=dev)
    reached = (g_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)      # (x/y, image * corner)
    beyond = torch.cat([-reached, reached]).amax(dim=1)                        # left, top, right, bottom
    beyond = beyond + torch.tensor([2 * REACH - cx, 2 * REACH - cy] * 2, device=dev)
    beyond = beyond.clamp(min=0).minimum(torch.tensor([w - 1.0, h - 1.0] * 2, device=dev))
    left, top, right, bottom = (int(m) for m in beyond.ceil().tolist())
    images = F.pad(images, [left, right, top, bottom], mode="reflect")
    g_inv = _affine(1.0, 0.0, 0.0, 1.0, (left - right) / 2, (top - bottom) / 2, device=dev) @ g_inv

    # Zero-stuffing then filtering is a stride-2 transposed convolution; padding 5 keeps 2x the length.
    pad = (len(SYM6) - 2) // 2
    images = F.conv_transpose2d(images, _taps(images, False), stride=(1, 2), padding=(0, pad), groups=c)
    images = F.conv_transpose2d(images, _taps(images, True), stride=(2, 1), padding=(pad, 0), groups=c)
    g_inv = _affine(2.0, 0.0, 0.0, 2.0, device=dev) @ g_inv @ _affine(0.5, 0.0, 0.0, 0.5, device=dev)
    g_inv = (_affine(1.0, 0.0, 0.0, 1.0, -0.5, -0.5, device=dev) @ g_inv    # half-pixel units: centres moved
             @ _affine(1.0, 0.0, 0.0, 1.0, 0.5, 0.5, device=dev))

    out_h, out_w = (h + 2 * REACH) * 2, (w + 2 * REACH) * 2                   # grid_sample's [-1, 1] units
    g_inv = (_affine(2 / images.shape[3], 0.0, 0.0, 2 / images.shape[2], device=dev) @ g_inv
             @ _affine(1 / (2 / out_w), 0.0, 0.0, 1 / (2 / out_h), device=dev))
    grid = F.affine_grid(g_inv[:, :2, :], [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Filter and keep every second sample; starting at 1 drops the REACH border on each side exactly.
    images = F.conv2d(images[:, :, :, 1:], _taps(images, False), stride=(1, 2), groups=c)
    return F.conv2d(images[:, :, 1:, :], _taps(images, True), stride=(2, 1), groups=c)


class AugmentPipe:
    """`pipe(images (B, C, H, W) float32 in [-1, 1])` -> (augmented images, labels (B, label_dim)).

    Labels, of the transforms that are on, in this order (all 0 where nothing fired): x-flip (0/1), y-flip
    (0/1), scale z, cos(angle) - 1, sin(angle), z cos(axis), z sin(axis) (anisotropy), shift x z, shift y z
    (z: the standard normal draw). Not an nn.Module: it holds only its settings; it draws from torch's global RNG.
    """

    def __init__(self, settings: AugmentSettings = EDM_CIFAR10) -> None:
        self.settings = settings

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augmented images and their labels; every draw from `generator` (None: torch's global RNG, as EDM)."""
        (n, _, h, w), s, device = images.shape, self.settings, images.device
        rng = {"device": device, "generator": generator}
        labels = [torch.zeros([n, 0], device=device)]
        for multiplier, axis in ((s.xflip, 3), (s.yflip, 2)):
            if multiplier > 0:
                flip = _gate(torch.randint(2, [n, 1, 1, 1], **rng), multiplier * s.p, generator=generator)
                images = torch.where(flip == 1, images.flip(axis), images)
                labels.append(flip)
        if s.geometric:
            g_inv, geometric_labels = self._geometry(n, h, w, device, generator)
            images = _resample(images, g_inv)
            labels += geometric_labels
        return images, torch.cat([label.to(torch.float32).reshape(n, -1) for label in labels], dim=1)

    def _geometry(self, n: int, h: int, w: int, device: torch.device,
                  generator: torch.Generator | None) -> tuple[Tensor, list[Tensor]]:
        """Draw the transforms; return the inverse map (output -> input coordinates) and the labels.

        Undoing "scale, rotate, stretch, shift" is the product of the inverses in that order.
        """
        s, rng = self.settings, {"device": device, "generator": generator}
        g_inv, labels = torch.eye(3, device=device), []
        if s.scale > 0:
            z = _gate(torch.randn([n], **rng), s.scale * s.p, generator=generator)
            shrink = 1 / z.mul(s.scale_std).exp2()
            g_inv = g_inv @ _affine(shrink, 0.0, 0.0, shrink, device=device)
            labels.append(z)
        if s.rotate_frac > 0:
            angle = (torch.rand([n], **rng) * 2 - 1) * (math.pi * s.rotate_frac_max)
            angle = _gate(angle, s.rotate_frac * s.p, generator=generator)
            g_inv = g_inv @ _rotate(angle)
            labels += [angle.cos() - 1, angle.sin()]
        if s.aniso > 0:
            z = torch.randn([n], **rng)
            axis = (torch.rand([n], **rng) * 2 - 1) * math.pi
            z = _gate(z, s.aniso * s.p, generator=generator)
            axis = _gate(axis, s.aniso_rotate_prob, generator=generator)
            shrink = 1 / z.mul(s.aniso_std).exp2()
            stretch = _affine(shrink, 0.0, 0.0, 1 / shrink, device=device)   # 1 / shrink: the reference's rounding
            g_inv = g_inv @ _rotate(-axis) @ stretch @ _rotate(axis)
            labels += [z * axis.cos(), z * axis.sin()]
        if s.translate_frac > 0:
            z = _gate(torch.randn([2, n], **rng), s.translate_frac * s.p, [1, n], generator)
            tx, ty = z[0].mul(w * s.translate_frac_std), z[1].mul(h * s.translate_frac_std)
            g_inv = g_inv @ _affine(1.0, 0.0, 0.0, 1.0, -tx, -ty, device=device)
            labels += [z[0], z[1]]
        return g_inv, labels
