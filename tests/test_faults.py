"""Faults a long cluster run meets: a second run on the same directory, a write that fails half-way."""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from genrobust import io
from genrobust.errors import UserError

from .conftest import ENV, copy_project


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
