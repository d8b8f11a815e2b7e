"""Damaged resume states: each file is corrupted in turn, for the training loop, diffusion training and the CLI.

A damaged current state falls back to `.prev` and ends where an uninterrupted run ends; with both
damaged the run stops with an error naming the files and `--restart`; `--restart` trains from step 0
and keeps the old state as `.stale`; a state made with other settings is set aside, not an error.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from genrobust.__main__ import main
from genrobust.diffusion import train_diffusion
from genrobust.errors import UserError
from genrobust.training.loop import FitResult, Recipe, TrainingData, fit
from genrobust.training.mixing import BatchMixer

from .conftest import LINF, ROOT, write_images

GARBAGE = b"\x00not a torch file\xff" * 64
RECIPE = Recipe("trades", 16, 0.05, 0.9, True, 5e-4, 0.1, 0.9, 0, LINF, 2, 5.0, epoch_steps=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _step(path: Path) -> int:
    return torch.load(path, weights_only=False)["step"]


# --- the training loop (train_classifier, adv_train) ---------------------------------------------------------------

def _fit(work: Path, log: Callable[[str], None] = lambda _: None, recipe: Recipe = RECIPE,
         restart: bool = False, first_label: int = 0) -> FitResult:
    rng = np.random.default_rng(0)
    labels = (np.arange(40, dtype=np.int64) + first_label) % 2
    images = (labels[:, None, None, None] * 120 + rng.integers(0, 60, (40, 32, 32, 3))).astype(np.uint8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    return fit(model, TrainingData(images, labels), BatchMixer(40, 0, 10, 0.0, seed=0), recipe, work, log=log,
               restart=restart)


class Killed(Exception):
    pass


def _killed_in_epoch_three(work: Path) -> tuple[Path, Path]:
    """Run until epoch 3's log line (before its save): state.pt holds step 8, state.pt.prev step 4."""
    def kill(line: str) -> None:
        if line.startswith("epoch=3"):
            raise Killed

    with pytest.raises(Killed):
        _fit(work, kill)
    current, previous = work / "state.pt", work / "state.pt.prev"
    assert (_step(current), _step(previous)) == (8, 4)
    return current, previous


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(value.float(), b.state_dict()[name].float(), atol=1e-6)
               for name, value in a.state_dict().items())


def test_loop_falls_back_to_the_previous_state_and_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = _fit(tmp_path / "straight")
    current, previous = _killed_in_epoch_three(tmp_path / "work")
    current.write_bytes(GARBAGE)
    logs: list[str] = []
    resumed = _fit(tmp_path / "work", logs.append)
    assert logs[0].startswith(f"warning: {current}: unreadable (") and logs[0].endswith(f"falling back to {previous}")
    assert logs[1] == f"resuming from {previous} at step 4/16"
    assert [row["step"] for row in resumed.history] == [4, 8, 12, 16]
    assert _same_weights(reference.last, resumed.last)
    assert (_step(current), _step(previous)) == (16, 12)       # the damaged file was overwritten, not kept as .prev


def test_loop_with_both_states_damaged_stops_naming_them_and_restart(tmp_path: Path) -> None:
    current, previous = _killed_in_epoch_three(tmp_path / "work")
    current.write_bytes(GARBAGE)
    _truncate(previous)
    with pytest.raises(UserError) as error:
        _fit(tmp_path / "work")
    message = str(error.value)
    assert f"{current}: unreadable" in message and f"{previous}: unreadable" in message and "--restart" in message
    assert current.read_bytes() == GARBAGE and previous.is_file()    # nothing deleted behind the user's back


def test_loop_restart_trains_from_step_zero_and_keeps_the_old_state_aside(tmp_path: Path) -> None:
    reference = _fit(tmp_path / "straight")
    current, previous = _killed_in_epoch_three(tmp_path / "work")
    current.write_bytes(GARBAGE)
    _truncate(previous)
    logs: list[str] = []
    restarted = _fit(tmp_path / "work", logs.append, restart=True)
    assert logs[0] == f"{current}: --restart given; moved it to {current}.stale, starting from step 0"
    assert not any(line.startswith("resuming") for line in logs)
    assert [row["step"] for row in restarted.history] == [4, 8, 12, 16]
    assert _same_weights(reference.last, restarted.last)
    assert (tmp_path / "work" / "state.pt.stale").read_bytes() == GARBAGE


def test_loop_state_from_other_settings_is_set_aside_not_an_error(tmp_path: Path) -> None:
    _fit(tmp_path / "work")
    old_key = torch.load(tmp_path / "work" / "state.pt", weights_only=False)["key"]
    logs: list[str] = []
    changed = _fit(tmp_path / "work", logs.append, replace(RECIPE, lr=0.02))
    state = tmp_path / "work" / "state.pt"
    assert logs[0] == f"{state}: made with other settings; moved it to {state}.stale, starting from step 0"
    assert [row["step"] for row in changed.history] == [4, 8, 12, 16]
    assert torch.load(tmp_path / "work" / "state.pt.stale", weights_only=False)["key"] == old_key


def test_loop_state_from_other_training_data_or_without_a_data_record_is_set_aside(tmp_path: Path) -> None:
    """Snakemake reruns adv_train when its data changes (a new subset, re-filtered pseudo-labels) but keeps the work
    folder: the finished state of the old data must not be taken for this run's."""
    _fit(tmp_path / "work")
    state = tmp_path / "work" / "state.pt"
    logs: list[str] = []
    other = _fit(tmp_path / "work", logs.append, first_label=1)
    assert logs[0] == f"{state}: made from other training data; moved it to {state}.stale, starting from step 0"
    assert [row["step"] for row in other.history] == [4, 8, 12, 16]
    older = torch.load(state, weights_only=False)
    del older["data"]
    torch.save(older, state)
    logs.clear()
    _fit(tmp_path / "work", logs.append, first_label=1)
    assert logs[0] == (f"{state}: saved without a record of its training data (an older genrobust); moved it to "
                       f"{state}.stale, starting from step 0")
    logs.clear()
    _fit(tmp_path / "work", logs.append, first_label=1)
    assert logs == [f"resuming from {state} at step 16/16"]                  # the same data resumes


# --- diffusion training ------------------------------------------------------------------------------------------

@pytest.fixture
def settings(digits_settings: dict) -> dict:
    settings = copy.deepcopy(digits_settings)
    settings["diffusion"].update(unet={"dim": 8, "dim_mults": [1, 2], "cond_drop_prob": 0.1},
                                 steps=4, batch_size=4, checkpoint_every=1, grid_every=0)
    return settings


@pytest.fixture
def train_npz(tmp_path: Path) -> Path:
    write_images(tmp_path / "train.npz", 16)
    return tmp_path / "train.npz"


def _diffusion(settings: dict, train_npz: Path, root: Path, restart: bool = False) -> dict:
    train_diffusion(settings, "edm", train_npz, root / "model.pt", root / "work", restart)
    return torch.load(root / "model.pt", weights_only=True)


def test_diffusion_falls_back_to_the_previous_checkpoint_and_ends_as_an_uninterrupted_run(
        tmp_path, settings, train_npz, capsys) -> None:
    straight = _diffusion(settings, train_npz, tmp_path / "straight")
    _diffusion(settings, train_npz, tmp_path / "run")
    current, previous = tmp_path / "run" / "work" / "ckpt.pt", tmp_path / "run" / "work" / "ckpt.pt.prev"
    assert (_step(current), _step(previous)) == (4, 3)
    current.write_bytes(GARBAGE)
    capsys.readouterr()
    resumed = _diffusion(settings, train_npz, tmp_path / "run")
    out = capsys.readouterr().out
    assert f"train_diffusion: warning: {current}: unreadable (" in out
    assert f"train_diffusion: resuming from {previous} at step 3" in out
    assert resumed["meta"]["resumed_from_step"] == 3
    assert all(torch.equal(resumed["state_dict"][key], value) for key, value in straight["state_dict"].items())


def test_diffusion_with_both_checkpoints_damaged_stops_then_restart_trains_from_step_zero(
        tmp_path, settings, train_npz) -> None:
    _diffusion(settings, train_npz, tmp_path / "run")
    current, previous = tmp_path / "run" / "work" / "ckpt.pt", tmp_path / "run" / "work" / "ckpt.pt.prev"
    _truncate(current)
    previous.write_bytes(GARBAGE)
    with pytest.raises(UserError, match="--restart") as error:
        _diffusion(settings, train_npz, tmp_path / "run")
    assert f"{current}: unreadable" in str(error.value) and f"{previous}: unreadable" in str(error.value)
    restarted = _diffusion(settings, train_npz, tmp_path / "run", restart=True)
    assert restarted["meta"]["resumed_from_step"] == 0
    assert (_step(current), _step(previous)) == (4, 3)


# --- the CLI flag, on each stage that resumes ----------------------------------------------------------------------

CLI = {
    "train_classifier": (["--out", "{tmp}/model.pt"], "state.pt",
                         ["presets.smoke.classifier.epochs=2", "presets.smoke.classifier.batch_size=16"]),
    "adv_train": (["--threat", "linf", "--out", "{tmp}/model.pt", "--last", "{tmp}/last.pt",
                   "--metrics", "{tmp}/metrics.tsv"], "state.pt",
                  ["presets.smoke.adv_train.epochs=2", "presets.smoke.adv_train.epoch_images=32",
                   "presets.smoke.adv_train.batch_size=16", "presets.smoke.adv_train.attack_steps=1",
                   "presets.smoke.adv_train.validation.size=10", "presets.smoke.adv_train.validation.attack_steps=1"]),
    "train_diffusion": (["--generator", "edm", "--out", "{tmp}/model.pt"], "ckpt.pt",
                        ["presets.smoke.diffusion.unet.dim=8", "presets.smoke.diffusion.steps=4",
                         "presets.smoke.diffusion.batch_size=8", "presets.smoke.diffusion.checkpoint_every=1",
                         "presets.smoke.diffusion.grid_every=0"]),
}


@pytest.mark.parametrize("stage", sorted(CLI))
def test_cli_names_restart_when_no_state_is_usable_and_restart_starts_afresh(tmp_path, stage, capsys) -> None:
    write_images(tmp_path / "train.npz", 60)
    paths, name, overrides = CLI[stage]
    argv = [stage, "--dataset", "digits", "--train", str(tmp_path / "train.npz"), "--work", str(tmp_path / "work"),
            *[arg.format(tmp=tmp_path) for arg in paths], "--params", str(ROOT / "params.yaml"),
            *[arg for item in overrides for arg in ("--set", item)]]
    assert main(argv) == 0
    current, previous = tmp_path / "work" / name, tmp_path / "work" / f"{name}.prev"
    current.write_bytes(GARBAGE)
    _truncate(previous)
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"genrobust {stage}: error: no usable resume state ({current}: unreadable" in error
    assert "rerun with --restart" in error
    assert main([*argv, "--restart"]) == 0
    assert "resuming" not in "".join(capsys.readouterr())
    assert (tmp_path / "work" / f"{name}.stale").read_bytes() == GARBAGE
    assert _step(current) > _step(previous) > 0


def test_a_recipe_key_is_the_one_older_states_were_saved_under() -> None:
    """The certified path added Recipe fields; at their defaults they stay out of the key, so a state saved by
    4fb9ca0 (before them) still resumes instead of being set aside as another run's."""
    assert RECIPE.key() == "517045fb0adb313e"


def test_a_background_save_writes_the_state_as_it_was_when_asked(tmp_path: Path) -> None:
    """Training goes on (and changes the weights) during the write: the file holds the snapshot, and a failed
    write surfaces at the next save."""
    from genrobust.resume import StateFile
    state_file = StateFile(tmp_path / "state.pt", ("step", "model"))
    weights = torch.zeros(1000)
    state_file.save_in_background({"step": 1, "model": {"w": weights}, "history": [{"epoch": 1}]})
    weights += 1                                     # the next step, while the thread may still be writing
    state_file.save_in_background({"step": 2, "model": {"w": weights}})
    state_file.wait()
    assert _step(tmp_path / "state.pt") == 2 and _step(tmp_path / "state.pt.prev") == 1
    assert torch.equal(torch.load(tmp_path / "state.pt.prev")["model"]["w"], torch.zeros(1000))
    (tmp_path / "blocked" / "state.pt" / "in-the-way").mkdir(parents=True)   # a folder where the file must go
    blocked = StateFile(tmp_path / "blocked" / "state.pt", ("step",))
    blocked.save_in_background({"step": 3})
    with pytest.raises(UserError, match="blocked/state.pt: could not write"):
        blocked.wait()
    blocked.wait()                                   # raised once
