"""Selection of generated images as in Wang et al. 2023: score by the conditioning class, keep the top fraction."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust import io, shards
from genrobust.errors import UserError
from genrobust.models.checkpoint import build_classifier, load_classifier, save_classifier
from genrobust.provenance import StageClock, read_meta
from genrobust.pseudo_label import Scores, pseudo_label, select
from genrobust.data.transform import to_tensor

from .conftest import ENV, ROOT

# Six images, conditioned on classes 0, 1, 2, 0, 1, 2. The classifier's favourite class and
# its probability differ from the conditioning class's probability, so the two modes disagree.
PROBS = np.array([[0.50, 0.40, 0.10],    # 0: cond 0 scores 0.50
                  [0.70, 0.20, 0.10],    # 1: cond 1 scores 0.20, yet the classifier is 0.70 sure of class 0
                  [0.10, 0.10, 0.80],    # 2: cond 2 scores 0.80
                  [0.30, 0.60, 0.10],    # 3: cond 0 scores 0.30
                  [0.05, 0.90, 0.05],    # 4: cond 1 scores 0.90
                  [0.45, 0.10, 0.45]],   # 5: cond 2 scores 0.45 (argmax: class 0, by index)
                 dtype=np.float32)
CONDITIONED = np.array([0, 1, 2, 0, 1, 2])


P_REAL = np.array([0.9, 0.1, 0.2, 0.6, 0.3, 0.8], dtype=np.float32)   # a discriminator's "looks real", per image


def _scores(probs: np.ndarray, conditioned: np.ndarray, p_real: np.ndarray | None = None) -> Scores:
    rows = np.arange(len(probs))
    p_real = np.full(len(probs), 0.5, np.float32) if p_real is None else p_real
    return Scores(conditioned, probs.argmax(1), probs[rows, conditioned], probs.max(1), p_real)


def test_conditioning_mode_keeps_the_top_fraction_per_conditioning_class() -> None:
    chosen = select(_scores(PROBS, CONDITIONED), "conditioning", 0.5, 3)
    assert np.flatnonzero(chosen.keep).tolist() == [0, 2, 4]         # per class, the higher of the two
    assert chosen.label.tolist() == CONDITIONED.tolist()               # the label stays the conditioning class
    np.testing.assert_allclose(chosen.confidence, [0.5, 0.2, 0.8, 0.3, 0.9, 0.45])


def test_confidence_mode_labels_and_ranks_by_the_classifier_instead() -> None:
    chosen = select(_scores(PROBS, CONDITIONED), "confidence", 0.5, 3)
    assert chosen.label.tolist() == [0, 0, 2, 1, 1, 0]
    # class 0: images 0, 1, 5 (0.50, 0.70, 0.45) -> ceil(1.5) = 2 kept; class 1: 3, 4 -> 1; class 2: 2 -> 1
    assert np.flatnonzero(chosen.keep).tolist() == [0, 1, 2, 4]


def test_arc_mode_keeps_what_the_robust_discriminator_finds_most_real_per_conditioning_class() -> None:
    chosen = select(_scores(PROBS, CONDITIONED, P_REAL), "arc", 0.5, 3)
    assert np.flatnonzero(chosen.keep).tolist() == [0, 4, 5]      # class 0: 0.9 > 0.6; 1: 0.3 > 0.1; 2: 0.8 > 0.2
    assert chosen.label.tolist() == CONDITIONED.tolist()
    np.testing.assert_allclose(chosen.confidence, P_REAL)
    unconditional = select(_scores(PROBS, np.full(6, -1), P_REAL), "arc", 1.0, 3)
    assert unconditional.label.tolist() == PROBS.argmax(1).tolist()   # no conditioning class: the classifier's


def test_arc_mode_never_keeps_an_image_its_discriminator_trained_on() -> None:
    chosen = select(_scores(PROBS, CONDITIONED, P_REAL), "arc", 0.5, 3, unscored=np.array([0, 5]))
    assert np.flatnonzero(chosen.keep).tolist() == [2, 3, 4]   # without the exclusion: [0, 4, 5]
    np.testing.assert_allclose(chosen.confidence, P_REAL)      # the scores stay as measured


def test_exactly_the_fraction_is_kept_despite_float_error() -> None:
    """0.7 * 10 is 7.000000000000001 in floating point: a plain ceil would keep 8 of 10."""
    conditioned = np.arange(100) % 10
    scores = _scores(np.random.default_rng(0).dirichlet(np.ones(10), 100).astype(np.float32), conditioned)
    for fraction, per_class in [(0.7, 7), (0.3, 3), (0.2, 2), (0.25, 3), (1.0, 10)]:
        keep = select(scores, "conditioning", fraction, 10).keep
        assert np.bincount(conditioned[keep], minlength=10).tolist() == [per_class] * 10, fraction


def _write_shards(directory: Path, count: int, shard_size: int, seed: int = 0) -> np.ndarray:
    """A generated set as the sampling stages lay it out: class i mod 10, images a little class-dependent."""
    rng = np.random.default_rng(seed)
    bounds = shards.shard_bounds(count, shard_size)
    images = []
    for index, (start, stop) in enumerate(bounds):
        labels = shards.shard_labels(start, stop, 10)
        batch = np.clip(labels[:, None, None, None] * 20 + rng.integers(0, 80, (stop - start, 32, 32, 3)), 0, 255)
        images.append(batch.astype(np.uint8))
        shards.write_shard(directory, index, images[-1], labels, {"shard": index})
    shards.write_manifest(directory, bounds, 10, StageClock("sample_diffusion"), generator="edm")
    return np.concatenate(images)


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}
    path = tmp_path / "classifier.pt"
    save_classifier(path, build_classifier(spec, 10, [0.5] * 3, [0.25] * 3).eval(), spec, 10, {})
    return path


QUALITY = {"fid": {"value": None, "reason": "no weights"}, "classifier_fd": {"value": 12.5},
           "class_agreement": {"overall": 0.4}, "arc": {"value": 0.03}, "images": 100}


@pytest.fixture
def judged(tmp_path: Path) -> tuple[Path, Path]:
    """A quality.json and a real-vs-generated discriminator, as the quality stage leaves them beside a set."""
    torch.manual_seed(1)
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}
    discriminator = tmp_path / "discriminator.pt"
    save_classifier(discriminator, build_classifier(spec, 2, [0.5] * 3, [0.25] * 3).eval(), spec, 2, {})
    io.write_json(tmp_path / "quality.json", QUALITY)
    return tmp_path / "quality.json", discriminator


def test_the_stage_keeps_the_top_fraction_by_conditioning_class_probability(tmp_path, classifier, judged) -> None:
    images = _write_shards(tmp_path / "shards", 100, 40)     # shards of 40, 40 and 20 images
    labels_out = tmp_path / "labels.npz"
    command = [sys.executable, "-m", "genrobust", "pseudo_label", "--dataset", "digits", "--classifier",
               str(classifier), "--shards", str(tmp_path / "shards"), "--out", str(labels_out),
               "--quality", str(judged[0]), "--discriminator", str(judged[1]),
               "--params", str(ROOT / "params.yaml"), "--set", "presets.smoke.pseudo_label.mode=conditioning",
               "--set", "presets.smoke.pseudo_label.keep_fraction=0.3",
               "--set", "presets.smoke.pseudo_label.batch_size=32"]
    done = subprocess.run(command, env=dict(ENV, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pseudo_label (conditioning): kept 30/100 images" in done.stdout

    written = io.open_npz(labels_out)
    conditioned = np.arange(100) % 10
    assert np.asarray(written["label"]).tolist() == conditioned.tolist()
    model, _ = load_classifier(classifier, 10)
    with torch.no_grad():
        probs = torch.softmax(model(to_tensor(images, torch.device("cpu"))), dim=1).numpy()
    expected = probs[np.arange(100), conditioned]
    np.testing.assert_allclose(written["confidence"], expected, rtol=1e-4, atol=1e-6)
    keep = np.asarray(written["keep"])
    for k in range(10):
        members = conditioned == k
        assert keep[members].sum() == 3
        assert expected[members & keep].min() >= expected[members & ~keep].max()
    assert read_meta(written)["mode"] == "conditioning" and read_meta(written)["kept"] == 30
    assert read_meta(written)["generated_quality"] == {"fid": None, "classifier_fd": 12.5, "class_agreement": 0.4,
                                                       "arc": 0.03, "images": 100}


def test_arc_mode_of_the_stage_ranks_by_the_discriminator(tmp_path, classifier, judged, digits_settings) -> None:
    images = _write_shards(tmp_path / "shards", 40, 40)
    settings = copy.deepcopy(digits_settings)
    settings["pseudo_label"].update(mode="arc", keep_fraction=0.5)
    pseudo_label(settings, classifier, tmp_path / "shards", *judged, tmp_path / "labels.npz")
    discriminator, _ = load_classifier(judged[1], 2)
    with torch.no_grad():
        p_real = torch.softmax(discriminator(to_tensor(images, torch.device("cpu"))), dim=1)[:, 1].numpy()
    written = io.open_npz(tmp_path / "labels.npz")
    np.testing.assert_allclose(written["confidence"], p_real, rtol=1e-4, atol=1e-6)
    keep, conditioned = np.asarray(written["keep"]), np.arange(40) % 10
    for k in range(10):
        members = conditioned == k
        assert keep[members].sum() == 2 and p_real[members & keep].min() >= p_real[members & ~keep].max()


def test_arc_mode_of_the_stage_skips_what_the_discriminator_trained_on(tmp_path, classifier, judged,
                                                                      digits_settings) -> None:
    _write_shards(tmp_path / "shards", 40, 40)
    io.write_json(judged[0], {**QUALITY, "arc": {"value": 0.03, "discriminator_trained_on": list(range(0, 40, 3))}})
    settings = copy.deepcopy(digits_settings)
    settings["pseudo_label"].update(mode="arc", keep_fraction=1.0)
    pseudo_label(settings, classifier, tmp_path / "shards", *judged, tmp_path / "labels.npz")
    keep = np.asarray(io.open_npz(tmp_path / "labels.npz")["keep"])
    assert np.flatnonzero(~keep).tolist() == list(range(0, 40, 3))


def test_a_set_without_its_quality_json_is_refused(tmp_path, classifier, judged, digits_settings) -> None:
    _write_shards(tmp_path / "shards", 20, 20)
    (tmp_path / "bad.json").write_text('{"fid": 1}')
    with pytest.raises(UserError, match="bad.json: not a quality.json"):
        pseudo_label(digits_settings, classifier, tmp_path / "shards", tmp_path / "bad.json", judged[1],
                     tmp_path / "labels.npz")


def test_confidence_mode_of_the_stage_labels_by_argmax(tmp_path, classifier, judged, digits_settings) -> None:
    images = _write_shards(tmp_path / "shards", 40, 40)
    settings = copy.deepcopy(digits_settings)
    settings["pseudo_label"].update(mode="confidence", keep_fraction=1.0)
    pseudo_label(settings, classifier, tmp_path / "shards", *judged, tmp_path / "labels.npz")
    model, _ = load_classifier(classifier, 10)
    with torch.no_grad():
        argmax = model(to_tensor(images, torch.device("cpu"))).argmax(1).numpy()
    written = io.open_npz(tmp_path / "labels.npz")
    assert np.asarray(written["label"]).tolist() == argmax.tolist() and np.asarray(written["keep"]).all()


def test_unconditional_images_take_the_classifiers_argmax_in_conditioning_mode(tmp_path, classifier, judged,
                                                                               digits_settings) -> None:
    """Gowal et al.'s DDPM arm beside Wang et al.'s EDM arms in one grid: one mode labels both as their papers do."""
    directory = tmp_path / "shards"
    shards.write_shard(directory, 0, np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                       np.full(4, -1, np.int64), {})
    shards.write_manifest(directory, [(0, 4)], 10, StageClock("test"), generator="ddpm")
    settings = copy.deepcopy(digits_settings)
    settings["pseudo_label"].update(mode="conditioning", keep_fraction=0.5)   # DDPM sets are not filtered
    pseudo_label(settings, classifier, directory, *judged, tmp_path / "labels.npz")
    model, _ = load_classifier(classifier, 10)
    with torch.no_grad():
        predicted = model(to_tensor(io.load_images(directory / "shard-00000.npz")[0], torch.device("cpu"))).argmax(1)
    written = io.open_npz(tmp_path / "labels.npz")
    assert np.asarray(written["label"]).tolist() == predicted.tolist() and np.asarray(written["keep"]).all()


def test_only_small_diffusion_sets_are_oversampled_and_filtered() -> None:
    """Wang et al.: the 1M set is the top 20% of 5M; 20M and 50M are taken as generated; Gaussian noise never filtered."""
    sample = {"num_images": 1_000_000, "oversample": 5, "filter_up_to": 1_000_000, "shard_size": 100_000}
    assert shards.generated_count(sample, "edm") == 5_000_000 and not shards.filtered(sample, "ddpm")   # Gowal et al.
    assert shards.generated_count(sample, "gaussian") == 1_000_000 and not shards.filtered(sample, "gaussian")
    big = dict(sample, num_images=20_000_000)
    assert shards.generated_count(big, "edm") == 20_000_000 and shards.shard_count(big, "edm") == 200
