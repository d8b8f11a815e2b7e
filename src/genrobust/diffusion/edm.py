"""EDM (Karras et al. 2022) around the DDPM++ network: preconditioning, training loss and Heun sampler.

- Preconditioning (EDM Table 1): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with c_skip = s^2/(sigma^2+s^2),
  c_out = sigma s / sqrt(sigma^2+s^2), c_in = 1/sqrt(sigma^2+s^2), c_noise = ln(sigma)/4 (s = sigma_data). The
  network runs in float32 whatever the caller's precision: the sampler's state is float64, as in EDM's sampler.
- Loss: ln(sigma) ~ N(P_mean, P_std^2), per pixel lambda(sigma) (D(y + n) - y)^2 with lambda = (sigma^2+s^2)/(sigma s)^2,
  summed over pixels and averaged over the batch (EDM's training loop), on images augmented by the non-leaky
  pipeline whose labels the network sees.
- Sampler: EDM Algorithm 1 (deterministic Heun, S_churn = 0) on the rho-schedule computed in float64; no clamping of
  the denoiser (issue 21): only the final images are clipped to the pixel range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .augment import LABEL_DIM, AugmentPipe, AugmentSettings
from .ddpmpp import DDPMpp, DDPMppSettings
from .guidance import guided
from .resize import to_pipeline_size


class EDMPreconditioned(nn.Module):
    """D(x; sigma, class) over a DDPM++ network; `model` keeps the released checkpoints' key prefix `model.`."""

    def __init__(self, resolution: int, channels: int, num_classes: int, augment_dim: int,
                 network: DDPMppSettings, sigma_data: float) -> None:
        super().__init__()
        self.num_classes, self.sigma_data = num_classes, sigma_data
        self.model = DDPMpp(resolution, channels, num_classes, augment_dim, network)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, R, R) of any float dtype; sigma a scalar or (B,); class_labels one-hot rows (zeros: no class)."""
        dtype = x.dtype
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        s2 = self.sigma_data ** 2
        c_skip = s2 / (sigma ** 2 + s2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + s2).sqrt()
        c_in = 1 / (s2 + sigma ** 2).sqrt()
        c_noise = sigma.log().flatten() / 4
        if class_labels is None and self.num_classes:
            class_labels = torch.zeros([1, self.num_classes], device=x.device)
        out = self.model(c_in * x, c_noise, class_labels, augment_labels)
        return (c_skip * x + c_out * out.to(torch.float32)).to(dtype)


def edm_loss(net: EDMPreconditioned, y: torch.Tensor, class_labels: torch.Tensor | None, rnd_normal: torch.Tensor,
             noise: torch.Tensor, augment_labels: torch.Tensor | None, p_mean: float, p_std: float) -> torch.Tensor:
    """Per-pixel weighted loss for given draws: rnd_normal (B, 1, 1, 1) ~ N(0, 1), noise ~ N(0, I) shaped as y."""
    sigma = (rnd_normal * p_std + p_mean).exp()
    weight = (sigma ** 2 + net.sigma_data ** 2) / (sigma * net.sigma_data) ** 2
    denoised = net(y + noise * sigma, sigma, class_labels, augment_labels)
    return weight * (denoised - y) ** 2


def sigma_schedule(steps: int, sigma_min: float, sigma_max: float, rho: float,
                   device: torch.device | None = None) -> torch.Tensor:
    """EDM eq. 5 in float64: sigma_max^(1/rho) to sigma_min^(1/rho) in `steps` even steps, to the power rho, then 0."""
    ramp = torch.arange(steps, dtype=torch.float64, device=device) / (steps - 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros_like(sigmas[:1])])


def heun_sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor,
                sigmas: torch.Tensor) -> torch.Tensor:
    """EDM Algorithm 1 with S_churn = 0: x_0 = latents * sigma_0, Euler steps with a Heun correction but the last.

    `denoise(x, sigma)` is D(x; sigma) for float64 x and a scalar float64 sigma; the state stays float64.
    """
    x = latents.to(torch.float64) * sigmas[0]
    for index, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        slope = (x - denoise(x, sigma).to(torch.float64)) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if index < len(sigmas) - 2:
            slope_next = (x_next - denoise(x_next, sigma_next).to(torch.float64)) / sigma_next
            x_next = x + (sigma_next - sigma) * (0.5 * slope + 0.5 * slope_next)
        x = x_next
    return x


@dataclass(frozen=True)
class Draws:
    """The per-image randomness of one EDM training batch: augmented images y in [-1, 1] and their labels, and the
    N(0, 1) draws behind sigma and the noise. Sliced like a batch, so each process keeps its share of a global one."""

    y: torch.Tensor
    augment_labels: torch.Tensor | None
    rnd_normal: torch.Tensor
    noise: torch.Tensor

    def __getitem__(self, rows: slice) -> "Draws":
        return Draws(self.y[rows], None if self.augment_labels is None else self.augment_labels[rows],
                     self.rnd_normal[rows], self.noise[rows])


class EDMDiffusion(nn.Module):
    """The pipeline's `arch: ddpmpp` model: `forward(images, classes)` is the training loss, `sample` the images.

    Images are [0, 1] NCHW outside, [-1, 1] inside (EDM's data range).
    """

    guidance = 1.0          # sample.guidance (load_model sets it)
    clamp_denoised = False  # sample.clamp_denoised: clip D(x) to [-1, 1] at every call (not in EDM's Algorithm 1)

    def __init__(self, resolution: int, channels: int, num_classes: int, network: DDPMppSettings,
                 edm: Mapping[str, float], augment_p: float, augment_dim: int, sample_steps: int = 18) -> None:
        """`augment_p` > 0 augments training batches (and needs `augment_dim` = LABEL_DIM); a released network
        may have the augmentation input (`augment_dim`) and be sampled without training."""
        super().__init__()
        if augment_p > 0 and augment_dim != LABEL_DIM:
            raise ValueError(f"augmentation labels need augment_dim = {LABEL_DIM}, not {augment_dim}")
        self.image_size, self.channels, self.num_classes = resolution, channels, num_classes
        self.edm, self.num_sample_steps = dict(edm), sample_steps
        self.augment = AugmentPipe(AugmentSettings.edm_cifar10(augment_p)) if augment_p > 0 else None
        self.net = EDMPreconditioned(resolution, channels, num_classes, augment_dim, network, edm["sigma_data"])

    def one_hot(self, classes: torch.Tensor) -> torch.Tensor:
        return F.one_hot(classes.long(), self.num_classes).to(torch.float32)

    def draw(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Draws:
        """sigma's normal draw, the augmentation and the noise for [0, 1] images, in EDM's order, from `generator`
        (None: torch's global RNG, as EDM's loss draws)."""
        y = images * 2 - 1
        rnd_normal = torch.randn([len(y), 1, 1, 1], device=y.device, generator=generator)
        y, augment_labels = self.augment(y, generator) if self.augment is not None else (y, None)
        noise = torch.randn(y.shape, device=y.device, generator=generator)
        return Draws(y, augment_labels, rnd_normal, noise)

    def forward(self, images: torch.Tensor, classes: torch.Tensor, draws: Draws | None = None) -> torch.Tensor:
        """EDM's training loss for one batch, summed over pixels and averaged over the batch; `draws` (of these
        images) made by `draw`, else drawn here."""
        draws = draws if draws is not None else self.draw(images)
        loss = edm_loss(self.net, draws.y, self.one_hot(classes), draws.rnd_normal, draws.noise,
                        draws.augment_labels, self.edm["P_mean"], self.edm["P_std"])
        return loss.sum() / len(images)

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Images in [0, 1] (float64) of the given classes; the latents are the only draw, from `generator`."""
        shape = (len(classes), self.channels, self.image_size, self.image_size)
        latents = torch.randn(shape, generator=generator).to(classes.device)
        return self.sample_from(latents, self.one_hot(classes), steps)

    @torch.no_grad()
    def sample_from(self, latents: torch.Tensor, class_labels: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        sigmas = sigma_schedule(steps or self.num_sample_steps, self.edm["sigma_min"], self.edm["sigma_max"],
                                self.edm["rho"], latents.device)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            out = guided(lambda drop: self.net(x, sigma, class_labels * (1.0 - drop)), self.guidance)
            return out.clamp(-1.0, 1.0) if self.clamp_denoised else out

        x = heun_sample(denoise, latents, sigmas)
        return to_pipeline_size(((x + 1) / 2).clamp(0.0, 1.0))
