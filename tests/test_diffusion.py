"""Diffusion stages: train and sample both generators, shard purity, resume (also after SIGKILL of the real
CLI), oversampling, flips, precision, sample grids, and bad input.

Models are tiny (dim 8, a few steps) so the file runs in seconds; what is checked is the
plumbing (file layouts, seeding, checkpoint/resume, skipping finished shards), not quality.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import sigmoid_beta_schedule
from PIL import Image

from genrobust import io, shards
from genrobust.diffusion import sample_diffusion, train_diffusion
from genrobust.diffusion.grid import COLUMNS, PADDING, grid_path
from genrobust.diffusion.model import build_model, model_config
from genrobust.diffusion.batches import Options, draw_batch, options
from genrobust.diffusion.train import CKPT_NAME
from genrobust.errors import UserError
from genrobust.provenance import meta_array, read_meta

from .conftest import ENV, ROOT, write_images

NUM_IMAGES, SHARD_SIZE = 20, 8   # shards of 8, 8 and 4 images


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def settings(digits_settings: dict) -> dict:
    settings = copy.deepcopy(digits_settings)
    settings["diffusion"].update(unet={"dim": 8, "dim_mults": [1, 2], "cond_drop_prob": 0.1},
                                 steps=2, batch_size=4, checkpoint_every=1, grid_every=0)
    settings["diffusion"]["ddpm"].update(timesteps=8, beta_schedule="cosine")   # linear at so few steps reaches beta 1
    settings["sample"].update(num_images=NUM_IMAGES, oversample=1, shard_size=SHARD_SIZE, batch_size=4, steps=2)
    return settings


@pytest.fixture
def train_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    io.save_npz(path, image=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                label=np.arange(16, dtype=np.int64) % 10,
                meta=meta_array({"stage": "prepare_data", "stage_wall_time_s": {"prepare_data": 1.5}}))
    return path


def _train(settings: dict, generator: str, train_npz: Path, root: Path) -> Path:
    model = root / generator / "model.pt"
    train_diffusion(settings, generator, train_npz, model, root / generator / "work")
    return model


def _images(directory: Path, index: int) -> np.ndarray:
    return np.array(io.open_npz(directory / shards.shard_name(index))["image"])


def _mtimes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.glob("shard-*.npz")}


@pytest.mark.parametrize("generator", ["edm", "ddpm"])
def test_train_then_sample_writes_model_shards_and_manifest(tmp_path, settings, train_npz, generator) -> None:
    model = _train(settings, generator, train_npz, tmp_path)
    saved = torch.load(model, weights_only=True)
    assert saved["generator"] == generator and saved["num_classes"] == 10
    assert saved["config"] == model_config(settings["diffusion"], generator)
    assert set(saved["meta"]["stage_wall_time_s"]) == {"prepare_data", "train_diffusion"}
    build_model(generator, saved["config"], 10).load_state_dict(saved["state_dict"])

    out = tmp_path / "gen"
    sample_diffusion(settings, generator, model, out)
    generated = shards.ShardSet.open(out, verify=True)
    manifest = generated.manifest
    assert (manifest["count"], manifest["num_classes"], len(manifest["shards"])) == (NUM_IMAGES, 10, 3)
    assert (manifest["generator"], manifest["seed"], manifest["steps"]) == (generator, 0, 2)
    assert manifest["model_sha256"] == io.sha256(model)
    assert set(manifest["meta"]["stage_wall_time_s"]) == {"prepare_data", "train_diffusion", "sample_diffusion"}
    images, labels = generated.take(np.arange(NUM_IMAGES))
    assert images.dtype == np.uint8 and images.shape == (NUM_IMAGES, 32, 32, 3)
    # EDM's images are class-balanced; Gowal et al.'s DDPM is unconditional (-1: pseudo_label's argmax labels them).
    expected = np.arange(NUM_IMAGES) % 10 if generator == "edm" else np.full(NUM_IMAGES, -1)
    assert labels.dtype == np.int64 and np.array_equal(labels, expected)
    assert images.std() > 0   # not a constant image


@pytest.mark.parametrize("generator", ["edm", "ddpm"])
def test_shard_alone_equals_shard_of_full_run(tmp_path, settings, train_npz, generator) -> None:
    model = _train(settings, generator, train_npz, tmp_path)
    sample_diffusion(settings, generator, model, tmp_path / "full")
    sample_diffusion(settings, generator, model, tmp_path / "one", shards=[1])
    assert sorted(_mtimes(tmp_path / "one")) == [shards.shard_name(1)]
    assert not (tmp_path / "one" / shards.MANIFEST).exists()
    assert np.array_equal(_images(tmp_path / "one", 1), _images(tmp_path / "full", 1))
    assert not np.array_equal(_images(tmp_path / "full", 0)[:4], _images(tmp_path / "full", 1)[:4])


def test_training_resumes_from_checkpoint_and_matches_an_uninterrupted_run(tmp_path, settings, train_npz,
                                                                          capsys) -> None:
    settings["diffusion"].update(steps=3, checkpoint_every=2)
    _train(settings, "edm", train_npz, tmp_path / "resumed")
    ckpt = tmp_path / "resumed" / "edm" / "work" / CKPT_NAME
    assert torch.load(ckpt, weights_only=True)["step"] == 3   # every 2 steps and at the end
    capsys.readouterr()

    settings["diffusion"]["steps"] = 5
    model = _train(settings, "edm", train_npz, tmp_path / "resumed")
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(ckpt, weights_only=True)["step"] == 5
    assert torch.load(model, weights_only=True)["meta"]["resumed_from_step"] == 3

    straight = _train(settings, "edm", train_npz, tmp_path / "straight")
    resumed_weights = torch.load(model, weights_only=True)["state_dict"]
    straight_weights = torch.load(straight, weights_only=True)["state_dict"]
    assert all(torch.equal(resumed_weights[key], straight_weights[key]) for key in straight_weights)


def test_checkpoint_from_other_settings_is_not_resumed(tmp_path, settings, train_npz, capsys) -> None:
    _train(settings, "edm", train_npz, tmp_path)
    settings["diffusion"]["lr"] *= 2
    model = _train(settings, "edm", train_npz, tmp_path)
    assert "made with other settings" in capsys.readouterr().out
    assert torch.load(model, weights_only=True)["meta"]["resumed_from_step"] == 0


def test_finished_shards_are_kept_and_broken_or_missing_ones_regenerated(tmp_path, settings, train_npz) -> None:
    model = _train(settings, "edm", train_npz, tmp_path)
    out = tmp_path / "gen"
    sample_diffusion(settings, "edm", model, out)
    before = _mtimes(out)
    first = {index: _images(out, index) for index in range(3)}

    sample_diffusion(settings, "edm", model, out)
    assert _mtimes(out) == before

    (out / shards.shard_name(1)).write_bytes(b"truncated")   # a corrupt shard
    (out / shards.shard_name(2)).unlink()                       # and one a killed run never wrote
    sample_diffusion(settings, "edm", model, out)
    after = _mtimes(out)
    assert after[shards.shard_name(0)] == before[shards.shard_name(0)]
    assert after[shards.shard_name(1)] != before[shards.shard_name(1)]
    assert all(np.array_equal(_images(out, index), first[index]) for index in range(3))
    shards.ShardSet.open(out, verify=True)


def test_shards_of_another_seed_are_regenerated(tmp_path, settings, train_npz) -> None:
    model = _train(settings, "edm", train_npz, tmp_path)
    out = tmp_path / "gen"
    sample_diffusion(settings, "edm", model, out, shards=[0])
    old = _images(out, 0)
    sample_diffusion(dict(settings, seed=1), "edm", model, out, shards=[0])
    assert not np.array_equal(_images(out, 0), old)


def test_bf16_shards_repeat_bit_for_bit_and_are_not_taken_for_fp32_ones(tmp_path, settings, train_npz) -> None:
    """The network under bf16 autocast rounds otherwise than fp32: its shards say so, and each precision's shard
    is the same bytes every time (an fp32 shard is redone, not kept, when bf16 is asked for)."""
    model = _train(settings, "edm", train_npz, tmp_path)
    bf16 = copy.deepcopy(settings)
    bf16["sample"]["precision"] = "bf16"
    for name in ("a", "b"):
        sample_diffusion(bf16, "edm", model, tmp_path / name, shards=[0])
    assert np.array_equal(_images(tmp_path / "a", 0), _images(tmp_path / "b", 0))
    meta = read_meta(io.open_npz(tmp_path / "a" / shards.shard_name(0)))
    assert meta["precision"] == "bf16" and "compile" not in meta
    sample_diffusion(settings, "edm", model, tmp_path / "fp32", shards=[0])
    assert "precision" not in read_meta(io.open_npz(tmp_path / "fp32" / shards.shard_name(0)))
    assert not np.array_equal(_images(tmp_path / "fp32", 0), _images(tmp_path / "a", 0))
    sample_diffusion(bf16, "edm", model, tmp_path / "fp32", shards=[0])      # the fp32 shard is not a bf16 one
    assert np.array_equal(_images(tmp_path / "fp32", 0), _images(tmp_path / "a", 0))


def test_bad_model_files_and_shard_indices_are_user_errors(tmp_path, settings, train_npz) -> None:
    missing = tmp_path / "nothing" / "model.pt"
    with pytest.raises(UserError, match=str(missing)):
        sample_diffusion(settings, "edm", missing, tmp_path / "gen")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable genrobust diffusion model"):
        sample_diffusion(settings, "edm", garbage, tmp_path / "gen")
    model = _train(settings, "edm", train_npz, tmp_path)
    with pytest.raises(UserError, match="holds a 'edm' model"):
        sample_diffusion(settings, "ddpm", model, tmp_path / "gen")
    other = dict(settings, dataset=dict(settings["dataset"], num_classes=20))
    with pytest.raises(UserError, match="10 classes"):
        sample_diffusion(other, "edm", model, tmp_path / "gen")
    with pytest.raises(UserError, match="shard 3 does not exist"):
        sample_diffusion(settings, "edm", model, tmp_path / "gen", shards=[3])
    assert not (tmp_path / "gen").exists()


def test_sigmoid_schedule_replaces_the_package_default(settings) -> None:
    config = model_config(settings["diffusion"], "ddpm")
    config["ddpm"]["beta_schedule"] = "sigmoid"
    model = build_model("ddpm", config, 10)
    expected = torch.cumprod(1 - sigmoid_beta_schedule(config["ddpm"]["timesteps"]), dim=0).float()
    torch.testing.assert_close(model.alphas_cumprod, expected)
    torch.testing.assert_close(model.sqrt_one_minus_alphas_cumprod, (1 - expected).sqrt())


def test_oversampling_generates_that_many_times_the_images(tmp_path, settings, train_npz) -> None:
    model = _train(settings, "edm", train_npz, tmp_path)
    settings["sample"].update(num_images=10, oversample=3)
    sample_diffusion(settings, "edm", model, tmp_path / "gen")
    generated = shards.ShardSet.open(tmp_path / "gen")
    assert len(generated) == 30 and len(generated.manifest["shards"]) == shards.shard_count(settings["sample"], "edm") == 4
    assert np.bincount(np.concatenate(generated.labels)).tolist() == [3] * 10


def test_flip_mirrors_half_the_batch_only_where_the_dataset_allows(params) -> None:
    images = np.zeros((64, 32, 32, 3), np.uint8)
    images[:, :, 16:] = 255                                   # dark left half, bright right half
    labels = np.zeros(64, np.int64)
    cpu = torch.device("cpu")
    plain, _ = draw_batch(images, labels, 64, Options(flip=False, bf16=False, channels_last=False), cpu,
                          torch.Generator().manual_seed(0))
    mirrored, _ = draw_batch(images, labels, 64, Options(flip=True, bf16=False, channels_last=False), cpu,
                             torch.Generator().manual_seed(0))
    assert (plain[:, :, :, 0] == 0).all()
    flipped = (mirrored[:, :, :, 0] == 1).all(dim=(1, 2))
    assert 10 < int(flipped.sum()) < 54 and (mirrored[~flipped][:, :, :, 0] == 0).all()
    # A mirrored digit, house number or shoe is not an image of its class; a mirrored CIFAR image is.
    assert {name: info.get("flip", False) for name, info in params["datasets"].items()} == {
        "cifar10": True, "cifar100": True, "svhn": False, "fashionmnist": False, "digits": False,
        "digits_gap": False, "cifar10_extra": True}


def test_precision_auto_is_bf16_on_cuda_only_and_bf16_trains_on_a_cpu(tmp_path, settings, train_npz) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert options(settings, cpu) == Options(flip=False, bf16=False, channels_last=False)
    assert options(settings, cuda) == Options(flip=False, bf16=True, channels_last=True)
    settings["diffusion"]["precision"] = "fp32"
    assert not options(settings, cuda).bf16
    settings["diffusion"]["precision"] = "bf16"
    assert options(settings, cpu).bf16
    model = _train(settings, "edm", train_npz, tmp_path)
    assert all(value.dtype == torch.float32 for value in torch.load(model, weights_only=True)["state_dict"].values()
               if value.is_floating_point())


def test_training_draws_class_ordered_grids_from_the_ema_model(tmp_path, settings, train_npz) -> None:
    """DDPM here (EDM grids: the SIGKILL test below), with fewer sampler steps than the model's 20."""
    settings["diffusion"].update(steps=3, grid_every=2, grid_steps=2)
    with_grids = torch.load(_train(settings, "ddpm", train_npz, tmp_path), weights_only=True)["state_dict"]
    settings["diffusion"]["grid_every"] = 0
    without = torch.load(_train(settings, "ddpm", train_npz, tmp_path / "none"), weights_only=True)["state_dict"]
    assert all(torch.equal(with_grids[key], without[key]) for key in without)    # grids draw no training randomness
    grids = tmp_path / "ddpm" / "work" / "grids"
    assert sorted(path.name for path in grids.iterdir()) == ["step-000002.png", "step-000003.png"]
    with Image.open(grid_path(grids.parent, 3)) as grid:
        assert grid.format == "PNG"
        assert grid.size == (COLUMNS * (32 + PADDING) + PADDING, 10 * (32 + PADDING) + PADDING)   # 10 class rows


def _cli(stage: str, *args: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "genrobust", stage, "--dataset", "digits", "--generator", "edm", *args,
            "--params", str(ROOT / "params.yaml"), *[arg for item in overrides for arg in ("--set", item)]]


def _kill_when(command: list[str], log: Path, ready, what: str) -> None:
    """Start the real stage, SIGKILL it as soon as `ready()` holds, and check it was still running then."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=dict(ENV, OMP_NUM_THREADS="1"), stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not ready():
            assert process.poll() is None, f"it ended before {what}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within 2 minutes"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL


def _rerun(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=dict(ENV, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


TINY_TRAINING = ["presets.smoke.diffusion.unet.dim=8", "presets.smoke.diffusion.steps=20",
                 "presets.smoke.diffusion.batch_size=8", "presets.smoke.diffusion.checkpoint_every=5",
                 "presets.smoke.diffusion.grid_every=20", "presets.smoke.diffusion.grid_steps=2"]


def test_sigkilled_training_resumes_from_its_checkpoint(tmp_path) -> None:
    write_images(tmp_path / "train.npz", 100)
    model, work = tmp_path / "model.pt", tmp_path / "work"
    command = _cli("train_diffusion", "--train", str(tmp_path / "train.npz"), "--out", str(model), "--work", str(work),
                   overrides=TINY_TRAINING)
    ckpt = work / CKPT_NAME
    _kill_when(command, tmp_path / "killed.log", ckpt.exists, "checkpoint")
    saved = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < saved < 20 and not model.exists()

    rerun = _rerun(command)
    assert f"resuming from {ckpt} at step {saved}" in rerun.stdout
    assert "step 20/20 loss" in rerun.stdout and "img/s" in rerun.stderr    # the log line and the progress bar
    meta = torch.load(model, weights_only=True)["meta"]
    assert (meta["steps"], meta["resumed_from_step"]) == (20, saved)
    assert torch.load(ckpt, weights_only=True)["step"] == 20
    assert [path.name for path in (work / "grids").iterdir()] == ["step-000020.png"]


def test_sigkilled_sampling_keeps_finished_shards_and_ends_equal_to_an_uninterrupted_run(
        tmp_path, settings, train_npz) -> None:
    model = _train(settings, "edm", train_npz, tmp_path)
    out = tmp_path / "gen"
    sample = {"num_images": 40, "oversample": 2, "shard_size": 10, "batch_size": 10, "steps": 2}   # 8 shards
    command = _cli("sample_diffusion", "--model", str(model), "--out", str(out),
                   overrides=[f"presets.smoke.sample.{key}={value}" for key, value in sample.items()])
    _kill_when(command, tmp_path / "killed.log", (out / shards.shard_name(0)).exists, "finished shard")
    finished = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.glob("shard-*.npz")}
    assert 1 <= len(finished) < 8 and not (out / shards.MANIFEST).exists()

    rerun = _rerun(command)
    assert all(f"shard {int(name[6:11])} " not in rerun.stdout for name in finished)   # none made again
    assert {name: (out / name).stat().st_ino for name in finished} == {name: ino for name, (ino, _) in finished.items()}
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == {n: m for n, (_, m) in finished.items()}

    settings["sample"].update(sample)
    sample_diffusion(settings, "edm", model, tmp_path / "straight")
    assert sorted(path.name for path in out.iterdir()) == sorted(p.name for p in (tmp_path / "straight").iterdir())
    resumed, straight = shards.ShardSet.open(out, verify=True), shards.ShardSet.open(tmp_path / "straight")
    assert len(resumed) == len(straight) == 80
    for mine, theirs in zip(resumed.images + resumed.labels, straight.images + straight.labels):
        assert np.asarray(mine).tobytes() == np.asarray(theirs).tobytes()


def test_ddpm_samples_by_the_packages_own_ancestral_loop(settings) -> None:
    """Gowal et al.'s arm: Ho et al.'s Algorithm 2 over every timestep, as GaussianDiffusion.p_sample_loop runs it;
    ours draws the same numbers from the shard's generator instead of torch's global one."""
    model = build_model("ddpm", model_config(settings["diffusion"], "ddpm"), 10).eval()
    ours = model.sample(torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    with torch.inference_mode():
        package = model.p_sample_loop((3, 3, 32, 32))
    torch.testing.assert_close(ours, package)
