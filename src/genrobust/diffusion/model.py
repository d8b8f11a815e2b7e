"""The diffusion models built from params: EDM (class-conditional) and Gowal et al.'s DDPM (unconditional).

Generator `edm` with `diffusion.arch: ddpmpp` (the paper preset) is EDM's own network and recipe (`edm.py`,
`ddpmpp.py`); with `arch: unet` it wraps denoising-diffusion-pytorch's classifier-free-guidance `Unet` (the smoke
preset and the demo) under the package's `ElucidatedDiffusion`, which is unconditional and lacks a seedable
sampler, so the subclass below adds exactly that. Generator `ddpm` is `ddpm.py`. Every model takes and returns
images in [0, 1], shaped (B, 3, 32, 32). A model may work at a lower `diffusion.resolution` (digits are 8x8 at
heart): it is trained on the images resized down to it and its samples are resized back up to 32 the way
prepare_data resized the real images up.

`sample(classes, generator)` draws all of its noise from the given CPU `torch.Generator` (then moves it to the
model's device), so a shard depends only on the weights and its seed (and `sample.layout: seed_per_image` draws
each image's latents from a generator of its own: `sample.py`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from denoising_diffusion_pytorch.classifier_free_guidance import Unet
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import Unet as PlainUnet
from denoising_diffusion_pytorch.elucidated_diffusion import (ElucidatedDiffusion, normalize_to_neg_one_to_one,
                                                              unnormalize_to_zero_to_one)
from torch import nn

from ..errors import UserError
from .augment import LABEL_DIM
from .ddpm import UnconditionalDDPM
from .ddpmpp import DDPMppSettings
from .edm import EDMDiffusion
from .guidance import guided
from .resize import IMAGE_SIZE, to_pipeline_size

GENERATORS = ("edm", "ddpm")
CHANNELS = 3
FORMAT = "genrobust-diffusion"


class ConditionalUnet(Unet):
    """The classifier-free-guidance Unet, declaring that it does no self-conditioning.

    `ElucidatedDiffusion` reads `net.self_condition`, which only the unconditional Unet defines.
    """

    self_condition = False


class ConditionalElucidatedDiffusion(ElucidatedDiffusion):
    """EDM (Karras et al. 2022) whose network also sees the class labels."""

    guidance = 1.0          # sample.guidance (load_model sets it)
    clamp_denoised = False  # sample.clamp_denoised: clip D(x) to [-1, 1] at every call (not in EDM's Algorithm 1)

    def preconditioned_network_forward(self, noised_images: torch.Tensor, sigma: torch.Tensor,
                                       classes: torch.Tensor, clamp: bool = False,
                                       cond_drop_prob: float | None = None) -> torch.Tensor:
        """The denoiser D(x; sigma, class) of EDM eq. 7, with the package's c_skip/c_out/c_in/c_noise."""
        padded_sigma = sigma.view(-1, 1, 1, 1)
        net_out = self.net(self.c_in(padded_sigma) * noised_images, self.c_noise(sigma), classes,
                           cond_drop_prob=cond_drop_prob)
        out = self.c_skip(padded_sigma) * noised_images + self.c_out(padded_sigma) * net_out
        return out.clamp(-1.0, 1.0) if clamp else out

    def forward(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Weighted denoising loss at log-normally drawn noise levels (EDM Table 1)."""
        images = normalize_to_neg_one_to_one(images)
        sigmas = self.noise_distribution(images.shape[0])
        noised = images + sigmas.view(-1, 1, 1, 1) * torch.randn_like(images)
        denoised = self.preconditioned_network_forward(noised, sigmas, classes)
        losses = F.mse_loss(denoised, images, reduction="none").mean(dim=(1, 2, 3))
        return (losses * self.loss_weight(sigmas)).mean()

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Deterministic Heun sampler: EDM Algorithm 1 with S_churn = 0, so only x_0 is random.

        `steps` (default: the model's `num_sample_steps`) lets training draw quick preview grids.
        """
        sigmas = self.sample_schedule(steps).tolist()
        shape = (len(classes), self.channels, self.image_size, self.image_size)
        x = sigmas[0] * torch.randn(shape, generator=generator).to(self.device)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            slope = (x - self._denoise(x, sigma, classes)) / sigma
            x_next = x + (sigma_next - sigma) * slope
            if sigma_next > 0:
                slope_next = (x_next - self._denoise(x_next, sigma_next, classes)) / sigma_next
                x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
            x = x_next
        return to_pipeline_size(unnormalize_to_zero_to_one(x.clamp(-1.0, 1.0)))

    def _denoise(self, x: torch.Tensor, sigma: float, classes: torch.Tensor) -> torch.Tensor:
        sigma_batch = torch.full((len(x),), sigma, device=x.device)
        out = guided(lambda drop: self.preconditioned_network_forward(x, sigma_batch, classes, cond_drop_prob=drop),
                     self.guidance)
        return out.clamp(-1.0, 1.0) if self.clamp_denoised else out


def resolution(config: Mapping[str, Any]) -> int:
    """The model's working size (files from before `diffusion.resolution` existed are 32)."""
    return config.get("resolution") or IMAGE_SIZE


def arch(config: Mapping[str, Any]) -> str:
    """The network kind (files from before `diffusion.arch` existed hold the Unet)."""
    return config.get("arch", "unet")


def _check_resolution(size: int, halvings: int, key: str, value: list[int]) -> None:
    if size % 2 ** halvings:
        raise UserError(f"diffusion.resolution = {size}: the network halves it {halvings} times ({key} = {value}), "
                        f"so it must be a multiple of {2 ** halvings}")


def model_config(diffusion: Mapping[str, Any], generator: str) -> dict[str, Any]:
    """The part of the `diffusion` params that fixes the architecture: what a model file must record."""
    network = diffusion["arch"]
    config = {"arch": network, network: dict(diffusion[network]), generator: dict(diffusion[generator]),
              "resolution": diffusion["resolution"] or IMAGE_SIZE}
    if network == "ddpmpp":
        config["augment_p"] = diffusion["augment_p"]
        config["augment_dim"] = LABEL_DIM if diffusion["augment_p"] > 0 else 0
    return config


def ddpmpp_settings(config: Mapping[str, Any]) -> DDPMppSettings:
    """`diffusion.ddpmpp` as the network's typed settings."""
    values = dict(config["ddpmpp"])
    return DDPMppSettings(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


def build_model(generator: str, config: Mapping[str, Any], num_classes: int,
                sample_steps: int | None = None) -> nn.Module:
    """A fresh model; `sample_steps` (params `sample.steps`) sets how many steps an EDM model's `sample` takes.

    `diffusion.arch` picks the EDM network; Gowal et al.'s DDPM is always the package's unconditional Unet.
    """
    if generator not in GENERATORS:
        raise UserError(f"generator {generator!r}: must be one of {', '.join(map(repr, GENERATORS))}")
    size = resolution(config)
    if arch(config) == "ddpmpp" and generator == "edm":
        return _build_ddpmpp(config, num_classes, size, sample_steps)
    unet = config["unet"]
    _check_resolution(size, len(unet["dim_mults"]) - 1, "diffusion.unet.dim_mults", unet["dim_mults"])
    if generator == "ddpm":
        ddpm = config["ddpm"]
        return UnconditionalDDPM(PlainUnet(dim=unet["dim"], dim_mults=tuple(unet["dim_mults"]), channels=CHANNELS),
                                 image_size=size, timesteps=ddpm["timesteps"], objective=ddpm["objective"],
                                 beta_schedule=ddpm["beta_schedule"])
    net = ConditionalUnet(dim=unet["dim"], num_classes=num_classes, cond_drop_prob=unet["cond_drop_prob"],
                          dim_mults=tuple(unet["dim_mults"]), channels=CHANNELS, learned_sinusoidal_cond=True)
    edm = config["edm"]
    steps = {} if sample_steps is None else {"num_sample_steps": sample_steps}
    return ConditionalElucidatedDiffusion(net, image_size=size, channels=CHANNELS, **steps,
                                          **{key: edm[key] for key in ("sigma_min", "sigma_max", "sigma_data",
                                                                       "rho", "P_mean", "P_std")})


def _build_ddpmpp(config: Mapping[str, Any], num_classes: int, size: int, sample_steps: int | None) -> EDMDiffusion:
    """EDM's DDPM++ under EDM's preconditioning."""
    network = ddpmpp_settings(config)
    _check_resolution(size, len(network.channel_mult) - 1, "diffusion.ddpmpp.channel_mult", list(network.channel_mult))
    steps = {} if sample_steps is None else {"sample_steps": sample_steps}
    return EDMDiffusion(size, CHANNELS, num_classes, network, config["edm"], config["augment_p"], config["augment_dim"],
                        **steps)
