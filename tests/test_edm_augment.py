"""genrobust's EDM augmentation pipe against figures measured from NVlabs/edm's own (commit 008a4e5).

tests/golden/edm_augment_figures.py measured them; its docstring says how. Same seed before the call,
same inputs: the same images and labels (to 1e-5) and the same amount drawn from the global RNG.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust.diffusion import augment
from genrobust.diffusion.augment import EDM_CIFAR10, LABEL_DIM, AugmentPipe, AugmentSettings

GOLDEN = Path(__file__).resolve().parent / "golden" / "edm_augment_008a4e5.npz"
FIGURES = json.loads(GOLDEN.with_suffix(".json").read_text())
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as stored:
        return {name: stored[name] for name in stored.files}


def settings_of(case: str) -> AugmentSettings:
    return AugmentSettings(**FIGURES["cases"][case]["settings"])


def augmented(golden: dict[str, np.ndarray], case: str,
              settings: AugmentSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our (images, labels, next four draws) for a case, leaving the caller's RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(golden[f"{case}.seed"]))
        images, labels = AugmentPipe(settings)(torch.from_numpy(golden[f"{case}.input"]))
        after = torch.rand(4)
    return images.numpy(), labels.numpy(), after.numpy()


def check(golden: dict[str, np.ndarray], case: str, settings: AugmentSettings) -> None:
    images, labels, after = augmented(golden, case, settings)
    np.testing.assert_allclose(labels, golden[f"{case}.labels"], rtol=0, atol=ATOL, err_msg=f"{case}: labels")
    np.testing.assert_allclose(images, golden[f"{case}.images"], rtol=0, atol=ATOL, err_msg=f"{case}: images")
    np.testing.assert_array_equal(after, golden[f"{case}.next"], err_msg=f"{case}: drew another amount")


@pytest.mark.parametrize("case", list(FIGURES["cases"]))
def test_matches_reference(golden: dict[str, np.ndarray], case: str) -> None:
    check(golden, case, settings_of(case))


def test_the_figures_cover_the_cifar10_setting() -> None:
    """The golden cases exercise every transform and both image sizes the brief names."""
    cases = FIGURES["cases"]
    assert FIGURES["commit"] == "008a4e5"
    assert settings_of("cifar10_p012") == EDM_CIFAR10
    fired = np.sum([cases[name]["fired_per_label"] for name in ("cifar10_p012", "cifar10_p012_seed27")], axis=0)
    assert (fired > 0).all()   # at p = 0.12 every label was non-zero for some image
    assert cases["small_8x8_p1"]["size"] == 8 and cases["all_fire_p1"]["settings"]["p"] == 1.0


def test_cifar10_settings_and_label_dim() -> None:
    assert EDM_CIFAR10 == AugmentSettings(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                                          translate_frac=1)
    assert LABEL_DIM == EDM_CIFAR10.label_dim == 9
    assert AugmentSettings(xflip=1, translate_frac=1).label_dim == 3
    with pytest.raises(ValueError, match="scale"):
        AugmentSettings(scale=-1)
    with pytest.raises(ValueError, match="aniso_rotate_prob"):
        AugmentSettings(aniso_rotate_prob=1.5)


def test_p0_gives_zero_labels_and_unchanged_images(golden: dict[str, np.ndarray]) -> None:
    """At p = 0 nothing fires; the images still go through the resampling, an identity up to float32
    rounding of the sampling grid (the reference itself moves uniform noise by up to ~1e-5)."""
    for size in (32, 8):
        images = torch.rand([8, 3, size, size], generator=torch.Generator().manual_seed(size)) * 2 - 1
        with torch.random.fork_rng(devices=[]):
            out, labels = AugmentPipe(AugmentSettings.edm_cifar10(p=0.0))(images)
        assert labels.shape == (8, LABEL_DIM) and not labels.any()
        torch.testing.assert_close(out, images, rtol=0, atol=5e-5)
    np.testing.assert_allclose(golden["p0.images"], golden["p0.input"], rtol=0, atol=5e-5)


def test_transforms_that_are_off_draw_nothing() -> None:
    images = torch.rand([2, 3, 8, 8]) * 2 - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out, labels = AugmentPipe(AugmentSettings(p=1.0))(images)
        after = torch.rand(2)
        torch.manual_seed(0)
        assert torch.equal(after, torch.rand(2))
    assert torch.equal(out, images) and labels.shape == (2, 0)


@pytest.mark.parametrize("case, change", [
    ("cifar10_p012", {"p": 0.5}),                   # same draws, other gates
    ("all_fire_p1", {"aniso_rotate_prob": 0.0}),    # same draws, stretch always along x
    ("all_fire_p1", {"translate_frac_std": 0.1}),   # same draws and labels, other shifts
    ("cifar10_p012", {"yflip": 0.0}),               # two draws fewer, one label fewer
])
def test_the_check_catches_a_difference(golden: dict[str, np.ndarray], case: str, change: dict) -> None:
    with pytest.raises(AssertionError):
        check(golden, case, dataclasses.replace(settings_of(case), **change))


def test_the_check_catches_a_mirrored_rotation(golden: dict[str, np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotating the other way keeps draws and labels; only the images can tell."""
    rotate = augment._rotate
    monkeypatch.setattr(augment, "_rotate", lambda angle: rotate(-angle))
    with pytest.raises(AssertionError, match="images"):
        check(golden, "all_fire_p1", settings_of("all_fire_p1"))
