"""The `smooth_train` stage: the base classifier of a randomized-smoothing model (Cohen et al. 2019).

Cohen et al. train on Gaussian-noise-augmented inputs, x + N(0, sigma^2 I) on [0, 1] pixels
without clipping (locuslab/smoothing, code/train.py), so that the classifier is accurate on the
noisy copies `certify` will vote with. Sehwag et al. 2022 train it on the same real + generated
mix as adversarial training; so does this stage, through the same trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .mixed import Outputs, train_on_mix


def check_sigma(sigma: float, where: str) -> float:
    """A noise level the certificate can use: positive and finite (Cohen et al.'s are 0.12 to 1.0)."""
    if not sigma > 0 or sigma == float("inf"):
        raise UserError(f"{where}: sigma = {sigma}; expected a positive noise standard deviation in [0, 1] "
                        "pixel units (the papers use 0.12, 0.25, 0.5 and 1.0)")
    return sigma


def smooth_train(settings: dict[str, Any], sigma: float, train_path: Path, outputs: Outputs, work_dir: Path,
                 shard_dir: Path | None = None, labels_path: Path | None = None, num_generated: int | None = None,
                 restart: bool = False) -> None:
    cfg = settings["smooth_train"]
    sigma = check_sigma(sigma, "smooth_train --sigma")
    objective = dict(loss="gaussian", sigma=sigma, lr_step_epochs=cfg["lr_step_epochs"], lr_gamma=cfg["lr_gamma"])
    train_on_mix("smooth_train", settings, objective, f"Gaussian noise augmentation at sigma={sigma:g}",
                 train_path, outputs, work_dir, shard_dir, labels_path, num_generated, restart, sigma=sigma)
