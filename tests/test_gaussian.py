"""The Gaussian baseline: the fit reproduces each class's mean and covariance; sampling is sharded and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from genrobust import io, shards
from genrobust.baselines.gaussian import fit_class, fit_gaussian, load_fit, sample_gaussian
from genrobust.errors import UserError

from .conftest import write_images


def test_fit_matches_the_sample_mean_and_covariance() -> None:
    rng = np.random.default_rng(0)
    for count, dim in [(50, 12), (8, 30)]:     # more images than pixels, and fewer (low rank)
        pixels = rng.random((count, dim))
        mean, factor = fit_class(pixels, rank_tolerance=1e-9)
        np.testing.assert_allclose(mean, pixels.mean(0))
        np.testing.assert_allclose(factor.T @ factor, np.cov(pixels, rowvar=False), atol=1e-12)


def test_fitted_file_and_samples_follow_each_class(tmp_path, digits_settings) -> None:
    images, labels = write_images(tmp_path / "train.npz", 400)
    fit_gaussian(digits_settings, tmp_path / "train.npz", tmp_path / "fit.npz")
    fitted = load_fit(tmp_path / "fit.npz", 10)
    for k in range(10):
        pixels = images[labels == k].reshape(-1, 32 * 32 * 3) / 255
        np.testing.assert_allclose(fitted[f"mean_{k}"], pixels.mean(0), atol=1e-6)
        factor = fitted[f"factor_{k}"].astype(np.float64)
        np.testing.assert_allclose(factor.T @ factor, np.cov(pixels, rowvar=False), atol=1e-5)
    settings = dict(digits_settings, sample=dict(digits_settings["sample"], num_images=2000, shard_size=1000))
    sample_gaussian(settings, tmp_path / "fit.npz", tmp_path / "shards")
    generated = shards.ShardSet.open(tmp_path / "shards", verify=True)
    gen_images, gen_labels = generated.take(np.arange(len(generated)))
    for k in range(10):
        # Class k's images have mean brightness about (20 + 20k) / 255; clipping keeps them there.
        assert abs(gen_images[gen_labels == k].mean() - images[labels == k].mean()) < 2.0


def test_shard_alone_equals_shard_of_full_run(tmp_path, digits_settings) -> None:
    write_images(tmp_path / "train.npz", 200)
    fit_gaussian(digits_settings, tmp_path / "train.npz", tmp_path / "fit.npz")
    sample_gaussian(digits_settings, tmp_path / "fit.npz", tmp_path / "full")
    sample_gaussian(digits_settings, tmp_path / "fit.npz", tmp_path / "one", only=[1])
    assert not (tmp_path / "one" / shards.MANIFEST).exists()
    one = io.open_npz(tmp_path / "one" / shards.shard_name(1))
    full = io.open_npz(tmp_path / "full" / shards.shard_name(1))
    assert np.array_equal(one["image"], full["image"]) and np.array_equal(one["label"], full["label"])


def test_a_missing_class_is_refused(tmp_path, digits_settings) -> None:
    images = np.zeros((20, 32, 32, 3), np.uint8)
    io.save_npz(tmp_path / "train.npz", image=images, label=np.arange(20, dtype=np.int64) % 9)
    with pytest.raises(UserError, match="train.npz: class 9 has no images"):
        fit_gaussian(digits_settings, tmp_path / "train.npz", tmp_path / "fit.npz")
