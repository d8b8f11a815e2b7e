"""Class-conditional diffusion models (EDM, DDPM): the train_diffusion and sample_diffusion stages."""

from .sample import sample_diffusion
from .train import train_diffusion

__all__ = ["sample_diffusion", "train_diffusion"]
