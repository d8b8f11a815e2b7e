"""Gowal et al.'s DDPM arm: Ho et al.'s unconditional DDPM, sampled ancestrally over every timestep.

Gowal et al. 2021 label DDPM samples with the non-robust classifier's argmax and use them unfiltered, so the model
knows no classes: it is denoising-diffusion-pytorch's unconditional `Unet` + `GaussianDiffusion`, plus the sigmoid
schedule (the package's class takes it by name only in newer versions) and a seeded sampler: Ho et al.'s
Algorithm 2, x_{t-1} = mu(x_t, x_0 clipped to [-1, 1]) + sigma_t z for t = T-1 ... 0 (no noise at the last step),
every z drawn from the shard's generator. Its images carry label -1 (no class); pseudo_label gives them the
classifier's argmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import GaussianDiffusion, Unet, sigmoid_beta_schedule

from .resize import to_pipeline_size


class UnconditionalDDPM(GaussianDiffusion):
    """The package's DDPM; `forward` and `sample` take the pipeline's class arguments and ignore them."""

    guidance = 1.0          # set by load_model; an unconditional model has nothing to guide
    clamp_denoised = False  # unused: Ho et al.'s sampler always clips its x_0 estimate

    def __init__(self, model: Unet, *, beta_schedule: str, timesteps: int, **kwargs: Any) -> None:
        super().__init__(model, timesteps=timesteps, beta_schedule="linear" if beta_schedule == "sigmoid"
                         else beta_schedule, **kwargs)
        if beta_schedule == "sigmoid":
            self._use_betas(sigmoid_beta_schedule(timesteps))

    @torch.no_grad()
    def _use_betas(self, betas: torch.Tensor) -> None:
        """Recompute every schedule buffer from `betas`, with the package's own formulas."""
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        snr = alphas_cumprod / (1.0 - alphas_cumprod)
        loss_weight = {"pred_noise": torch.ones_like(snr), "pred_x0": snr, "pred_v": snr / (snr + 1)}[self.objective]
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
            "loss_weight": loss_weight,
        }
        for name, value in buffers.items():
            getattr(self, name).copy_(value.float())

    def forward(self, images: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The package's noise-prediction loss on [0, 1] images; the classes are not used."""
        return super().forward(images)

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """len(classes) images by Ho et al.'s ancestral sampler over all `num_timesteps` steps (`steps` unused)."""
        shape = (len(classes), self.channels, *self.image_size)   # the package keeps the size as (height, width)
        x = torch.randn(shape, generator=generator).to(self.device)
        for time in reversed(range(self.num_timesteps)):
            t = torch.full((len(x),), time, device=x.device, dtype=torch.long)
            mean, _, log_variance, _ = self.p_mean_variance(x, t, clip_denoised=True)
            noise = torch.randn(shape, generator=generator).to(self.device) if time > 0 else 0.0
            x = mean + (0.5 * log_variance).exp() * noise
        return to_pipeline_size(self.unnormalize(x))
