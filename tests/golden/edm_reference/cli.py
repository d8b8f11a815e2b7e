"""The command line of tests/golden/edm_figures.py: which checkout to measure, where the npz, JSON and scratch files go."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .measure import run


def main(description: str) -> None:
    """Measure, then write the npz and the JSON beside it; `description` is the script's own first docstring line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--edm", default=os.environ.get("EDM"), required=os.environ.get("EDM") is None,
                        help="a checkout of NVlabs/edm (commit 008a4e5)")
    parser.add_argument("--out", required=True, help="the npz to write; the JSON goes beside it with the same stem")
    parser.add_argument("--scratch", default=None,
                        help="where the run's dataset, pickles and snapshots go (default: a new folder beside --edm)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edm_figures_", dir=args.scratch or str(Path(args.edm).resolve().parent)))
    figures, info = run(args.edm, workdir)
    info["workdir"] = str(workdir)
    out = Path(args.out)
    np.savez_compressed(out, **figures)
    info["npz_keys"] = len(figures)
    info["npz_bytes"] = out.stat().st_size
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{out}: {len(figures)} arrays, {out.stat().st_size} bytes; {out.with_suffix('.json')}", file=sys.stderr)
