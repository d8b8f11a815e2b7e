"""benchmarks/gpu_check.py --tiny: the GPU check's every section runs on this CPU at toy sizes, so it cannot rot
before a GPU runs it at the paper's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ENV, ROOT

SECTIONS = ["device", "dag", "trades_step", "memory", "loader", "bf16_attack", "diffusion", "evaluation",
            "state_save", "compile", "two_ranks"]


def test_the_tiny_gpu_check_passes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.jsonl"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--out", str(out)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert done.returncode == 0, [row for row in rows if not row["ok"]] or done.stderr[-3000:]
    assert [row["section"] for row in rows] == SECTIONS and all(row["ok"] for row in rows)
    by_name = {row["section"]: row for row in rows}
    assert by_name["trades_step"]["host_syncs_per_step"] == 0 and by_name["compile"]["unique_graphs"] == 3
    assert by_name["diffusion"]["bit_repeatable"] and by_name["two_ranks"]["match_one_process"]
    assert done.stdout.splitlines() == out.read_text().splitlines()             # printed as written


def test_the_full_check_refuses_to_run_without_a_gpu(tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(torch.cuda.is_available())"]).returncode:
        pytest.skip("a GPU is here: the full check would run, not refuse")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "x")], cwd=ROOT,
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 2 and "no GPU here" in done.stderr
