#!/usr/bin/env python
"""Measure the golden figures of tests/test_edm_augment.py from NVlabs/edm's own augmentation pipeline.

    python tests/golden/edm_augment_figures.py --edm PATH/TO/edm --out tests/golden/edm_augment_008a4e5.npz

PATH is a checkout of github.com/NVlabs/edm at commit 008a4e5 (CC BY-NC-SA: nothing of it is copied
here; its `training.augment.AugmentPipe` is imported at run time). The npz holds, per case, the input
images, the seed given to torch.manual_seed just before the call, the output images and labels, and
`next`: four torch.rand draws taken right after the call, so the test also sees how much the pipeline
drew. The JSON beside it holds the commit, the torch version, and each case's settings under
AugmentPipe's own keyword names (genrobust's AugmentSettings takes the same names).

Inputs are B = 8 images uniform in [-1, 1] from torch.Generator().manual_seed(case index). Everything
runs in fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

COMMIT = "008a4e5"
BATCH = 8
CIFAR10 = {"xflip": 1e8, "yflip": 1.0, "scale": 1.0, "rotate_frac": 1.0, "aniso": 1.0, "translate_frac": 1.0}
CASES = {   # name: (settings, image size, seed before the call)
    "cifar10_p012": ({"p": 0.12, **CIFAR10}, 32, 9),          # seeds where most transforms fire for some image
    "cifar10_p012_seed27": ({"p": 0.12, **CIFAR10}, 32, 27),
    "all_fire_p1": ({"p": 1.0, **CIFAR10}, 32, 2),
    "small_8x8_p1": ({"p": 1.0, **CIFAR10}, 8, 3),
    "p0": ({"p": 0.0, **CIFAR10}, 32, 4),
    "flips_and_shift_only": ({"p": 0.5, "xflip": 1.0, "yflip": 1.0, "translate_frac": 1.0}, 16, 5),  # 4 labels
}


def run(edm: str) -> tuple[dict[str, np.ndarray], dict]:
    sys.path.insert(0, str(Path(edm).resolve()))
    from training.augment import AugmentPipe   # NVlabs' module, imported from the checkout

    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"commit": COMMIT, "torch": torch.__version__, "numpy": np.__version__,
                  "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "batch": BATCH, "cases": {}}
    for index, (name, (settings, size, seed)) in enumerate(CASES.items()):
        generator = torch.Generator().manual_seed(index)
        images = torch.rand([BATCH, 3, size, size], generator=generator) * 2 - 1
        pipe = AugmentPipe(**settings)
        torch.manual_seed(seed)
        out, labels = pipe(images)
        after = torch.rand(4)
        if settings["p"] == 1.0:   # every gate passes: scale, rotation, stretch and shift labels are non-zero
            assert bool((labels[:, [2, 3, 4, 5, 7, 8]] != 0).all()), name   # (z sin(axis) is 0 when the axis isn't used)
        arrays.update({f"{name}.input": images.numpy(), f"{name}.seed": np.asarray(seed),
                       f"{name}.images": out.numpy(), f"{name}.labels": labels.numpy(), f"{name}.next": after.numpy()})
        meta["cases"][name] = {"settings": settings, "size": size, "seed": seed, "label_dim": labels.shape[1],
                               "fired_per_label": (labels != 0).sum(dim=0).tolist()}
    return arrays, meta


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm", required=True, help=f"a checkout of NVlabs/edm (commit {COMMIT})")
    parser.add_argument("--out", required=True, type=Path, help="the .npz to write; the .json goes beside it")
    args = parser.parse_args()
    arrays, meta = run(args.edm)
    np.savez_compressed(args.out, **arrays)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
