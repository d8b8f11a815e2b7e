"""Faults a long cluster run meets, done for real: a second Snakemake on the same directory, a write that
fails half-way, a writer killed outright, a model file that is not the one DVC recorded, a `dvc pull` killed
part-way, and (e2e) Snakemake killed during each long stage in turn."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrobust import io
from genrobust.__main__ import main
from genrobust.errors import UserError

from .conftest import ENV, ROOT, copy_project, run, write_images


def test_a_second_snakemake_is_refused_by_the_lock_and_the_first_finishes(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    first = subprocess.Popen(["snakemake", "--cores", "1", "data/digits/train.npz"], cwd=project, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    locks = project / ".snakemake" / "locks"
    deadline = time.monotonic() + 60
    while not (locks.is_dir() and any(locks.iterdir())):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
        time.sleep(0.05)
    second = subprocess.run(["snakemake", "--cores", "1", "data/digits/test.npz"], cwd=project, env=ENV,
                            capture_output=True, text=True)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout + second.stderr
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert io.load_images(project / "data/digits/train.npz", 10)[0].shape[1:] == (32, 32, 3)


def test_a_write_that_fails_half_way_leaves_nothing_and_names_the_path(tmp_path: Path, monkeypatch) -> None:
    def disk_full(handle, **arrays) -> None:
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    target = tmp_path / "data" / "train.npz"
    with pytest.raises(UserError) as error:
        io.save_npz(target, image=np.zeros((1, 32, 32, 3), np.uint8), label=np.zeros(1, np.int64))
    assert str(error.value) == f"{target}: could not write (No space left on device)"
    assert list(target.parent.iterdir()) == []


def test_the_leftover_of_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up; the next write of the same path does it."""
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from genrobust import io\n"
        "with io.atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a shard'); os.kill(os.getpid(), signal.SIGKILL)"), str(tmp_path / "shard-00001.npz")],
        env=ENV)
    assert killed.returncode == -signal.SIGKILL
    leftover, = tmp_path.glob(".shard-00001.npz.*.tmp")
    other = tmp_path / ".shard-00002.npz.abcd1234.tmp"            # another job's, perhaps still being written
    other.write_bytes(b"x")
    io.save_npz(tmp_path / "shard-00001.npz", image=np.zeros((1, 32, 32, 3), np.uint8), label=np.zeros(1, np.int64))
    assert sorted(path.name for path in tmp_path.iterdir()) == [other.name, "shard-00001.npz"]
    assert not leftover.exists()


MAKE_MODEL = """
import sys, torch
from genrobust.models.checkpoint import build_classifier, save_classifier
spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}
torch.manual_seed(int(sys.argv[1]))
save_classifier("models/model.pt", build_classifier(spec, 10, [0.5] * 3, [0.25] * 3), spec, 10, {})
"""
QUICK_EVALUATE = ["presets.smoke.evaluate.n_examples=8", "presets.smoke.evaluate.version=custom",
                  "presets.smoke.evaluate.attacks=[apgd-ce]"]


def _evaluate_locked(checkpoint: str) -> list[str]:
    return ["evaluate", "--dataset", "digits", "--threat", "linf", "--checkpoint", checkpoint, "--test", "test.npz",
            "--out", "results/r.json", "--dvc-lock", "dvc.lock", "--params", str(ROOT / "params.yaml"),
            *[arg for item in QUICK_EVALUATE for arg in ("--set", item)]]


def test_a_checkpoint_that_disagrees_with_dvc_lock_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """A real one-stage DVC project records the model; a model swapped in afterwards is refused by name."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "make_model.py").write_text(MAKE_MODEL)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "python make_model.py 0", "deps": ["make_model.py"], "outs": ["models/model.pt"]}}}))
    run(["dvc", "init", "--no-scm", "-q"], repo)
    run(["dvc", "repro", "-q"], repo)
    recorded = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["outs"][0]["md5"]
    write_images(repo / "test.npz", 40)
    monkeypatch.chdir(repo)

    assert main(_evaluate_locked("models/model.pt")) == 0
    result = json.loads((repo / "results" / "r.json").read_text())
    assert result["dvc_lock"] == {"file": "dvc.lock", "stage": "train", "md5": recorded}
    (repo / "results" / "r.json").unlink()

    run([sys.executable, "make_model.py", "1"], repo)               # another model under the recorded name
    swapped = hashlib.md5((repo / "models" / "model.pt").read_bytes()).hexdigest()
    assert swapped != recorded and "modified:" in run(["dvc", "status"], repo).stdout
    refused = subprocess.run([sys.executable, "-m", "genrobust", *_evaluate_locked("models/model.pt")], cwd=repo,
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"genrobust evaluate: error: models/model.pt: md5 {swapped} disagrees with dvc.lock, which records {recorded} "
        f"(stage train); `dvc checkout --force models/model.pt` restores the recorded file, "
        f"`dvc commit --force train` records this one"]
    assert not (repo / "results" / "r.json").exists()

    run(["dvc", "checkout", "--force", "models/model.pt"], repo)    # the advice in the message works
    assert main(_evaluate_locked("models/model.pt")) == 0

    io.save_npz(repo / "other.pt", x=np.zeros(1))
    assert main(_evaluate_locked("other.pt")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "genrobust evaluate: error: dvc.lock: records no file output other.pt; expected the checkpoint to be one of "
        "its stages' outputs (1 recorded)")


def _tracked_project(root: Path, remote: Path, count: int) -> dict[str, str]:
    """A DVC project (no git) tracking a folder of `count` files, pushed to a local remote; their sha256."""
    root.mkdir()
    run(["dvc", "init", "--no-scm", "-q"], root)
    (root / ".dvcignore").write_bytes((ROOT / ".dvcignore").read_bytes())
    rng = np.random.default_rng(0)
    hashes = {}
    for index in range(count):
        data = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
        io.write_bytes(root / "data" / f"f{index:04d}.bin", data)
        hashes[f"f{index:04d}.bin"] = hashlib.sha256(data).hexdigest()
    run(["dvc", "add", "-q", "data"], root)
    run(["dvc", "remote", "add", "-d", "store", str(remote)], root)
    run(["dvc", "remote", "modify", "store", "verify", "true"], root)
    run(["dvc", "push", "-q"], root)
    return hashes


def _files_in(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if folder.is_dir() else 0


@pytest.mark.parametrize("phase", ["download", "checkout"])
def test_a_dvc_pull_killed_part_way_then_repeated_ends_complete_and_verified(tmp_path: Path, phase: str) -> None:
    """SIGKILL while objects arrive in the cache (download) or while files land in the workspace (checkout)."""
    count = 400
    hashes = _tracked_project(tmp_path / "first", tmp_path / "remote", count)
    second = tmp_path / "second"
    second.mkdir()
    run(["dvc", "init", "--no-scm", "-q"], second)
    for name in ("data.dvc", ".dvc/config", ".dvcignore"):
        (second / name).write_bytes((tmp_path / "first" / name).read_bytes())

    def progress() -> int:                   # cache objects are the count files plus the folder listing
        return _files_in(second / ".dvc" / "cache") if phase == "download" else _files_in(second / "data")

    pull = subprocess.Popen(["dvc", "pull", "-q"], cwd=second, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not 0 < progress() < count // 2:
        assert pull.poll() is None, f"dvc pull ended before it could be killed part-way:\n{pull.stdout.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(pull.pid, signal.SIGKILL)
    assert pull.wait() == -signal.SIGKILL
    assert _files_in(second / "data") < count                   # the workspace really is incomplete

    # A pull killed while checking out leaves DVC's temporary file in data/; without the project's
    # .dvcignore entry for *.tmp the repeated pull refuses to remove it and fails.
    run(["dvc", "pull", "-q"], second)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], second).stdout
    pulled = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in (second / "data").iterdir()
              if path.suffix != ".tmp"}
    assert pulled == hashes


# --- SIGKILL of every long stage under the real Snakemake ------------------------------------

TARGET = "results/digits_linf.json"
SHORT = {                       # presets.smoke, cut so that every stage takes seconds on 2 cores
    "diffusion": {"steps": 12, "checkpoint_every": 4, "grid_every": 0},
    "sample": {"num_images": 40, "shard_size": 20},
    "classifier": {"epochs": 2},
    "adv_train": {"epochs": 2, "epoch_images": 256, "validation": {"size": 40, "every": 1, "attack_steps": 3}},
    "evaluate": {"n_examples": 8},
}
SHARDS = "data/digits/generated/edm/shards"
DIFFUSION_STATE, CLASSIFIER_STATE, ADV_STATE = ("work/digits/diffusion/edm/ckpt.pt", "work/digits/classifier/state.pt",
                                                "work/digits/adv/linf/state.pt")


def _short_project(path: Path) -> Path:
    project = copy_project(path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in SHORT.items():
        params["presets"]["smoke"][section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def _snakemake(project: Path, target: str) -> subprocess.Popen:
    return subprocess.Popen(["snakemake", "--cores", "2", "--rerun-incomplete", target], cwd=project, env=ENV,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every job it started (they share its process group), as a lost node would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while any(_in_group(pid, process.pid) for pid in os.listdir("/proc") if pid.isdigit()):
        assert time.monotonic() < deadline, "a job outlived its killed process group"
        time.sleep(0.05)


def _in_group(pid: str, group: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[2]) == group


def _shards_part_way(project: Path) -> bool:
    """A shard is finished and the job of another one has started."""
    done = list((project / SHARDS).glob("shard-*.npz"))
    started = list((project / "logs/digits/sample_edm").glob("shard-*.log"))
    return bool(done) and len(started) > len(done)


def _step(state: Path) -> int:
    return int(torch.load(state, map_location="cpu", weights_only=False)["step"])


@pytest.mark.e2e
def test_sigkill_of_every_long_stage_then_rerun_incomplete_finishes_and_matches(tmp_path: Path) -> None:
    """Each long stage in turn is killed (with Snakemake itself) part-way; `snakemake --unlock` then
    `--rerun-incomplete` resumes it, and the result equals that of an uninterrupted run."""
    project = _short_project(tmp_path / "killed")
    kills = [   # (what the run is asked for, when the stage is part-way, what must not exist yet)
        ("models/digits/diffusion/edm/model.pt", lambda: (project / DIFFUSION_STATE).exists(),
         "models/digits/diffusion/edm/model.pt"),
        (f"{SHARDS}/manifest.json", lambda: _shards_part_way(project), f"{SHARDS}/manifest.json"),
        ("models/digits/classifier/model.pt", lambda: (project / CLASSIFIER_STATE).exists(),
         "models/digits/classifier/model.pt"),
        ("models/digits/adv/linf/model.pt", lambda: (project / ADV_STATE).exists(), "models/digits/adv/linf/model.pt"),
        (TARGET, lambda: (project / "logs/digits/evaluate_linf.log").exists(), TARGET),
    ]
    saved: dict[str, int] = {}
    for target, part_way, absent in kills:
        snakemake = _snakemake(project, target)
        deadline = time.monotonic() + 300
        while not part_way():
            assert snakemake.poll() is None, f"{target} finished before it was killed:\n{snakemake.stdout.read()}"
            assert time.monotonic() < deadline, f"{target}: the stage never got part-way"
            time.sleep(0.05)
        _kill_group(snakemake)
        assert not (project / absent).exists(), f"{target}: the kill came after the stage had finished"
        for state in (DIFFUSION_STATE, CLASSIFIER_STATE, ADV_STATE):
            if state not in saved and (project / state).exists():
                saved[state] = _step(project / state)
        if target.endswith("manifest.json"):
            finished = {path.name: path.stat().st_mtime_ns for path in (project / SHARDS).glob("shard-*.npz")}
        run(["snakemake", "--unlock"], project)      # as the README says: a killed Snakemake cannot release its lock
    run(["snakemake", "--cores", "2", "--rerun-incomplete", TARGET], project)

    logs = project / "logs" / "digits"
    assert (f"train_diffusion: resuming from {DIFFUSION_STATE} at step {saved[DIFFUSION_STATE]}"
            in (logs / "train_diffusion_edm.log").read_text())
    assert (f"resuming from {CLASSIFIER_STATE} at step {saved[CLASSIFIER_STATE]}/"
            in (logs / "train_classifier.log").read_text())
    assert f"resuming from {ADV_STATE} at step {saved[ADV_STATE]}/" in (logs / "adv_train_linf.log").read_text()
    assert {name: (project / SHARDS / name).stat().st_mtime_ns for name in finished} == finished   # not redone
    with open(project / "models/digits/adv/linf/metrics.tsv") as handle:
        assert [line.split("\t")[0] for line in handle][1:] == ["1", "2"]               # no epoch lost or repeated
    leftovers = [str(path) for top in ("data", "models", "results") for path in (project / top).rglob("*.tmp")]
    assert leftovers == []

    reference = _short_project(tmp_path / "straight")
    run(["snakemake", "--cores", "2", TARGET], reference)
    for name in ("models/digits/diffusion/edm/model.pt", "models/digits/classifier/model.pt",
                 "models/digits/adv/linf/model.pt"):
        ours, theirs = (torch.load(root / name, weights_only=True)["state_dict"] for root in (project, reference))
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    for shard in sorted((reference / SHARDS).glob("shard-*.npz")):
        ours, theirs = io.open_npz(project / SHARDS / shard.name), io.open_npz(shard)
        assert np.array_equal(ours["image"], theirs["image"]) and np.array_equal(ours["label"], theirs["label"])
    ours, theirs = (io.open_npz(root / "data/digits/generated/edm/labels.npz") for root in (project, reference))
    assert all(np.array_equal(ours[key], theirs[key]) for key in theirs if key != "meta")
    results = [json.loads((root / TARGET).read_text()) for root in (project, reference)]
    for key in ("clean_accuracy", "robust_accuracy", "per_attack_accuracy", "n_examples"):
        assert results[0][key] == results[1][key], key
