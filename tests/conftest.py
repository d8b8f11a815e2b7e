"""Shared helpers: the project's own params, tiny image sets, and runnable copies of the project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust import config, io
from genrobust.attacks.threat import Threat

LINF = Threat("Linf", 8 / 255, 2 / 255)     # the papers' CIFAR-10 Linf threat
ROOT = Path(__file__).resolve().parents[1]

PROJECT = ["Snakefile", "workflow", "envs", "params.yaml", "dvc.yaml", ".dvcignore", ".dvc", ".gitignore", "Makefile",
           "src"]
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def run(args: list[str], cwd: Path, timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a real command (snakemake, dvc, git, make) with this venv first on PATH; fail with its output."""
    done = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def parse_dry_run(output: str) -> dict[str, list[dict]]:
    """Jobs of `snakemake -n -p` (or of a real run's log: `localrule X:`) by rule: inputs, outputs and shell command."""
    jobs: dict[str, list[dict]] = {}
    job: dict = {}
    for line in output.splitlines():
        line = line.strip()                 # a grouped job (the SLURM profile's shards) is indented in its group
        if match := re.match(r"(?:local)?rule (\w+):$", line):
            job = {"input": [], "output": []}
            jobs.setdefault(match.group(1), []).append(job)
        elif match := re.match(r"(input|output): (.*)$", line):
            job[match.group(1)] = match.group(2).split(", ")
        elif line.startswith("Shell command: "):
            job["shell"] = line.removeprefix("Shell command: ")
    return jobs


def run_two_at_a_time(snakemake: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A toy grid's `snakemake ...` with one thread a job (`--max-threads 1` and one OpenMP thread, which only make
    sense together): its jobs mostly start Python, so two at a time on 2 cores take 51 s where one at a time takes
    80 s (the tiny gap grid)."""
    return run([*snakemake, "--max-threads", "1"], cwd, env=dict(ENV, OMP_NUM_THREADS="1"))


def copy_project(destination: Path) -> Path:
    """What a user checks out, so pipeline tests never touch this working tree."""
    destination.mkdir(parents=True)
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp", "cache"))
        else:
            shutil.copy2(source, destination / name)
    return destination


MAIN_TARGET = "results/digits_linf.json"


@pytest.fixture(scope="session")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits DAG run once per session (`snakemake --cores 2 results/digits_linf.json`); never changed:
    tests that run more, share or edit params work on a copy (`shutil.copytree(main_run, ..., symlinks=True)`)."""
    project = copy_project(tmp_path_factory.mktemp("main_run") / "project")
    run(["snakemake", "--cores", "2", MAIN_TARGET], project)
    return project


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP threads stall badly when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
