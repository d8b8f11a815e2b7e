"""FID: the Fréchet distance against closed forms, streamed statistics, and the FID InceptionV3 loaded offline.

No test touches the network: the Inception weights are random ones saved to a local file, torch
hub's cache is pointed at a temporary folder, and downloads are tried only from file:// URLs.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from genrobust.errors import UserError
from genrobust.quality import frechet, inception
from genrobust.quality.frechet import FeatureStats, features_stats, frechet_distance


def _spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    root = rng.normal(size=(dim, dim))
    return root @ root.T / dim + 0.1 * np.eye(dim)


def test_identical_sets_give_zero() -> None:
    stats = FeatureStats().update(np.random.default_rng(0).normal(size=(500, 64)))
    assert abs(frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)) < 1e-6


def test_diagonal_gaussians_match_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2, a, b = rng.normal(size=8), rng.normal(size=8), rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_full_covariances_match_an_independent_computation() -> None:
    """Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD root that eigh computes exactly."""
    rng = np.random.default_rng(2)
    mu1, mu2, s1, s2 = rng.normal(size=20), rng.normal(size=20), _spd(rng, 20), _spd(rng, 20)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    from pytorch_fid.fid_score import calculate_frechet_distance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its sqrtm(disp=False) is deprecated in scipy >= 1.16
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2),
                                                                   rel=1e-9)


def test_streamed_statistics_equal_numpy_on_the_whole_array() -> None:
    features = np.random.default_rng(3).normal(loc=1e3, size=(1000, 32)).astype(np.float32)
    stats, start = FeatureStats(), 0
    for size in [1, 0, 7, 300, 2, 690]:
        stats.update(features[start:start + size])
        start += size
    assert stats.count == 1000
    whole = features.astype(np.float64)
    np.testing.assert_allclose(stats.mean, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(whole, rowvar=False), rtol=1e-9, atol=1e-12)


def test_statistics_refuse_what_they_cannot_say() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().update(np.ones((1, 3))).cov
    with pytest.raises(ValueError, match="dimension 4"):
        FeatureStats().update(np.ones((2, 3))).update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats().update(np.full((2, 3), np.nan))


def test_singular_covariances_stay_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    low_rank = FeatureStats().update(rng.normal(size=(5, 40)))   # fewer samples than dimensions: rank 4
    other = FeatureStats().update(rng.normal(size=(6, 40)))
    assert np.isfinite(frechet_distance(low_rank.mean, low_rank.cov, other.mean, other.cov))
    calls = []

    def first_fails(matrix: np.ndarray) -> np.ndarray:  # pytorch_fid's fallback: eps on both diagonals
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else linalg.sqrtm(matrix)

    monkeypatch.setattr(frechet, "_sqrtm", first_fails)
    zeros = np.zeros((3, 3))
    assert frechet_distance(np.zeros(3), zeros, np.ones(3), zeros) == pytest.approx(3, abs=1e-5)
    np.testing.assert_allclose(calls[1], np.eye(3) * frechet.EPS ** 2)


def test_features_stats_runs_an_extractor_over_uint8_batches() -> None:
    images = np.random.default_rng(6).integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    extract = lambda batch: batch.reshape(len(batch), -1)[:, :5].astype(np.float64)  # noqa: E731
    stats = features_stats(extract, (images[start:start + 3] for start in range(0, 10, 3)))
    np.testing.assert_allclose(stats.cov, np.cov(extract(images), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="expected uint8"):
        features_stats(extract, [images.astype(np.float32)])


def test_invalid_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The real FID architecture with seeded random weights, saved as a plain state dict like the FID file."""
    torch.manual_seed(0)
    state = inception.build_fid_inception().state_dict()
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def empty_hub(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


IMAGES = np.random.default_rng(5).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)


def test_local_weights_give_deterministic_pool3_features_like_pytorch_fid(random_weights, monkeypatch) -> None:
    path, state = random_weights
    model, reason = inception.load_inception(path, "cpu")
    assert reason is None
    extract = inception.make_extractor(model, "cpu", batch_size=2)   # each image costs ~1 s on one core
    first = extract(IMAGES)
    assert first.shape == (2, 2048) and first.dtype == np.float64 and np.isfinite(first).all() and first.any()
    np.testing.assert_array_equal(first, extract(IMAGES))
    import pytorch_fid.inception as reference       # pytorch_fid's own network, its download replaced by our weights
    monkeypatch.setattr(reference, "load_state_dict_from_url", lambda *args, **kwargs: state)
    theirs = reference.InceptionV3([3]).eval()
    with torch.inference_mode():
        expected = theirs(torch.from_numpy(IMAGES).permute(0, 3, 1, 2).float() / 255)[0].flatten(1).double().numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_weights_that_do_not_fit_name_the_file(tmp_path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match=r"wrong\.pth: weights do not fit"):
        inception.load_inception(wrong)
    with pytest.raises(UserError, match=r"absent\.pth: FID Inception weights not found"):
        inception.load_inception(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"junk\.pth: not a readable torch file"):
        inception.load_inception(tmp_path / "junk.pth")


def test_no_weights_and_no_download_is_a_quick_reason(empty_hub) -> None:
    tick = time.perf_counter()
    model, reason = inception.load_inception(None)
    assert model is None and "quality.inception_weights" in reason and "downloads are off" in reason
    assert time.perf_counter() - tick < 5
    assert not empty_hub.exists()


def test_hub_cache_is_used_when_no_path_is_given(random_weights, empty_hub) -> None:
    cached = inception.cached_weights_path()
    assert cached.parent == empty_hub / "checkpoints"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(random_weights[0])
    model, reason = inception.load_inception(None)
    assert reason is None and model is not None


def test_download_only_when_allowed_checked_and_never_raising(random_weights, empty_hub, tmp_path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inception, "FID_WEIGHTS_URL", (tmp_path / "missing.pth").as_uri())
    model, reason = inception.load_inception(None, allow_download=True, timeout_s=5)
    assert model is None and reason.startswith("could not download")
    monkeypatch.setattr(inception, "FID_WEIGHTS_URL", random_weights[0].as_uri())
    model, reason = inception.load_inception(None, allow_download=True, timeout_s=5)
    assert model is None and "sha256" in reason and not inception.cached_weights_path().exists()
    monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256_PREFIX", "")
    model, reason = inception.load_inception(None, allow_download=True, timeout_s=30)
    assert reason is None and model is not None and inception.cached_weights_path().is_file()
