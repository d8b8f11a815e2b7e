"""The quality stage: ARC's curve and area, and quality.json from real shards, classifier and data."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust import io, shards
from genrobust.data.transform import to_tensor
from genrobust.models.checkpoint import build_classifier, load_classifier, save_classifier
from genrobust.provenance import StageClock
from genrobust.quality import arc, edm_fid, inception, stage, tf_inception
from genrobust.quality.frechet import frechet_distance
from genrobust.quality.stage import quality, subset

from .conftest import write_images

TINY_ARC = {"norm": "Linf", "eps": [0.0, 0.0625, 0.25], "select_eps": 0.0625, "images": 80,
            "model": {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}, "epochs": 3, "batch_size": 40,
            "lr": 0.05, "attack_steps": 2}


def test_area_above_chance_is_the_trapezoid_of_accuracy_over_one_half() -> None:
    assert arc.area_above_chance((0.0, 0.1, 0.3), [1.0, 0.7, 0.5]) == pytest.approx(0.1 * (0.5 + 0.2) / 2 + 0.2 * 0.2 / 2)
    assert arc.area_above_chance((0.0, 1.0), [0.4, 0.3]) == 0.0        # worse than chance counts as chance
    assert arc.area_above_chance((0.0, 0.5), [0.5, 0.5]) == 0.0


def test_split_is_balanced_and_disjoint() -> None:
    real = np.zeros((30, 32, 32, 3), np.uint8)
    generated = np.full((50, 32, 32, 3), 255, np.uint8)
    data = arc.split(real, generated, seed=0)
    assert len(data.train_x) == len(data.test_x) == 30
    assert (data.train_y == arc.REAL).sum() == (data.test_y == arc.REAL).sum() == 15
    # the labels follow the images: real ones are black
    assert (data.train_x[data.train_y == arc.REAL] == 0).all() and (data.train_x[data.train_y != arc.REAL] == 255).all()


def _set(directory: Path, images: np.ndarray, labels: np.ndarray) -> None:
    shards.write_shard(directory, 0, images, labels, {"shard": 0})
    shards.write_manifest(directory, [(0, len(images))], 10, StageClock("sample_diffusion"), generator="edm")


def test_arc_separates_noise_from_real_images_and_not_real_from_real(tmp_path, one_thread) -> None:
    real, _ = write_images(tmp_path / "real.npz", 160, seed=0)
    twin, _ = write_images(tmp_path / "twin.npz", 160, seed=1)        # the same distribution, other draws
    noise = np.random.default_rng(2).integers(0, 256, (160, 32, 32, 3), dtype=np.uint8)
    cfg = arc.ArcConfig.from_params(TINY_ARC)
    far, _, _ = arc.measure(real[:80], noise[:80], cfg, 0, torch.device("cpu"))
    near, _, _ = arc.measure(real[:80], twin[:80], cfg, 0, torch.device("cpu"))
    assert far["robust_discrimination_accuracy"][0] >= 0.8             # noise is told apart at eps 0
    assert near["robust_discrimination_accuracy"][0] <= 0.75           # a twin set is not
    assert far["value"] > near["value"] + 0.02
    assert far["eps"] == TINY_ARC["eps"] and len(far["robust_discrimination_accuracy"]) == 3


def _settings(digits_settings: dict, **quality_overrides) -> dict:
    settings = copy.deepcopy(digits_settings)
    settings["quality"].update({"num_images": None, "batch_size": 40, "arc": dict(TINY_ARC), **quality_overrides})
    return settings


def _stage_inputs(tmp_path: Path, train_count: int = 100) -> tuple[Path, Path, Path]:
    """A 100-image generated set, `train_count` training images and a random standard classifier."""
    write_images(tmp_path / "train.npz", train_count, seed=0)
    generated, labels = write_images(tmp_path / "generated.npz", 100, seed=3)
    _set(tmp_path / "shards", generated, labels)
    torch.manual_seed(0)
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}
    save_classifier(tmp_path / "classifier.pt", build_classifier(spec, 10, [0.5] * 3, [0.25] * 3).eval(), spec, 10, {})
    return tmp_path / "shards", tmp_path / "train.npz", tmp_path / "classifier.pt"


@pytest.fixture
def stage_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return _stage_inputs(tmp_path)


def test_the_stage_writes_every_figure_and_fid_says_why_it_is_missing(tmp_path, stage_inputs, digits_settings,
                                                                      one_thread, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    out, disc = tmp_path / "quality.json", tmp_path / "discriminator.pt"
    quality(_settings(digits_settings), *stage_inputs, out, disc)
    result = io.read_json(out)
    assert result["fid"]["value"] is None and "weights" in result["fid"]["reason"]
    assert result["fid"]["protocol"] == "pytorch-fid"
    assert result["fid_edm"]["value"] is None and "weights" in result["fid_edm"]["reason"]
    assert result["fid_edm"]["protocol"].startswith("EDM")
    assert result["classifier_fd"]["value"] > 0
    agreement = result["class_agreement"]
    assert 0 <= agreement["overall"] <= 1 and len(agreement["per_class"]) == 10
    model, _ = load_classifier(stage_inputs[2], 10)
    images = io.load_images(stage_inputs[0] / "shard-00000.npz")[0]
    with torch.no_grad():
        predicted = model(to_tensor(images, torch.device("cpu"))).argmax(1).numpy()
    assert agreement["overall"] == pytest.approx(float((predicted == np.arange(100) % 10).mean()))
    assert len(result["arc"]["robust_discrimination_accuracy"]) == 3 and result["arc"]["value"] >= 0
    assert "repository has no ARC code" in result["arc"]["definition"]
    trained = result["arc"]["discriminator_trained_on"]             # pseudo_label's arc mode never keeps these
    assert len(trained) == len(set(trained)) == TINY_ARC["images"] // 2 and trained != list(range(len(trained)))
    assert result["images"] == 100 and "stage_wall_time_s" in result["meta"]
    discriminator, ckpt = load_classifier(disc, 2)                      # pseudo_label's arc mode loads it so
    assert ckpt["meta"]["eps"] == TINY_ARC["select_eps"]


def test_quality_measures_a_seeded_random_subset_not_the_first_images() -> None:
    chosen = subset(1000, 50, seed=0)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and chosen.tolist() != list(range(50))
    assert np.array_equal(chosen, subset(1000, 50, seed=0)) and not np.array_equal(chosen, subset(1000, 50, seed=1))
    assert chosen.max() > 500                                    # a file sorted by class is sampled across classes


def test_classifier_fd_of_a_set_against_itself_is_zero(tmp_path, stage_inputs, digits_settings, one_thread) -> None:
    shard_dir, train, classifier = stage_inputs
    images, labels = io.load_images(train)
    _set(tmp_path / "same", np.asarray(images), np.asarray(labels))
    quality(_settings(digits_settings), tmp_path / "same", train, classifier, tmp_path / "q.json", tmp_path / "d.pt")
    assert abs(io.read_json(tmp_path / "q.json")["classifier_fd"]["value"]) < 1e-6


def test_both_fids_are_measured_with_local_weights_bypassing_the_hash_check(tmp_path, digits_settings, one_thread,
                                                                           monkeypatch) -> None:
    """Random weights of the real architecture: their sha256 cannot start with the real file's prefix, so THIS TEST
    replaces the expected prefix with the file's own hash. Only the bookkeeping is checked, never the values, so
    the distances use the first 16 of the 2048 features (sqrtm of a 2048 x 2048 product takes ~8 s on one core;
    test_frechet.py checks the formula). 24 training images: fid_edm runs Inception over the whole training set."""
    stage_inputs = _stage_inputs(tmp_path, train_count=24)
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception.pth"
    torch.save(inception.build_fid_inception().state_dict(), weights)   # the real architecture, random weights
    digest = io.sha256(weights)
    monkeypatch.setattr(tf_inception, "EXPECTED_SHA256_PREFIX", digest[:8])
    seen_dims = []

    def first_16(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
        seen_dims.append(len(mu1))
        return frechet_distance(mu1[:16], sigma1[:16, :16], mu2[:16], sigma2[:16, :16])

    monkeypatch.setattr(stage, "frechet_distance", first_16)
    monkeypatch.setattr(edm_fid, "frechet_distance", first_16)
    settings = _settings(digits_settings, inception_weights=str(weights), num_images=6, fid_draws=2)
    quality(settings, *stage_inputs, tmp_path / "q.json", tmp_path / "d.pt")
    result = io.read_json(tmp_path / "q.json")
    fid = result["fid"]
    assert isinstance(fid["value"], float) and np.isfinite(fid["value"]) and "InceptionV3" in fid["features"]
    assert fid["protocol"] == "pytorch-fid"
    edm = result["fid_edm"]
    assert len(edm["draws"]) == 2 and edm["draws"][0] != edm["draws"][1] and edm["value"] == min(edm["draws"])
    assert edm["images_per_draw"] == 6 and edm["disjoint_draws"] and edm["real_images"] == 24   # the whole train set
    assert edm["weights_sha256"] == digest and edm["protocol"].startswith("EDM") and edm["value"] != fid["value"]
    assert seen_dims.count(2048) == 3                                   # fid once, fid_edm once per draw
