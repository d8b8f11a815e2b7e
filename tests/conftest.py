"""Shared fixtures: the project's own params, resolved for digits, and tiny image sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrobust import config, io

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params() -> dict:
    return config.load_params(ROOT / "params.yaml")


@pytest.fixture
def digits_settings(params: dict) -> dict:
    return config.resolve(params, "digits")


def write_images(path: Path, count: int, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images whose class shows in their mean brightness, so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % num_classes
    base = (labels * (200 // num_classes) + 20).astype(np.int16)[:, None, None, None]
    images = np.clip(base + rng.integers(-15, 16, size=(count, 32, 32, 3)), 0, 255).astype(np.uint8)
    io.save_npz(path, image=images, label=labels)
    return images, labels
