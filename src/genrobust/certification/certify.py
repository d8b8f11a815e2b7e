"""The `certify` stage: Cohen et al.'s CERTIFY over test points, resumable point by point.

For each point: n0 noisy copies pick the top class, n fresh copies count how often the base
classifier returns it, and the Clopper-Pearson bound on that count gives the radius (bounds.py).
Each point's noise comes from its own generator, seeded by (seed, test index), so a point's
verdict does not depend on the points before it or on a kill in between:
after every point the finished rows are saved (resume.StateFile), and a rerun continues at the
next one. An abstention is an error at every radius, as in Cohen et al.'s tables.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import io
from ..attacks.pgd import accuracy
from ..data.transform import to_tensor
from ..distributed import device
from ..errors import UserError
from ..models.checkpoint import load_classifier
from ..provenance import StageClock
from ..resume import StateFile
from ..training.smoothing import check_sigma
from .bounds import certified_radius, lower_confidence_bound
from .record import certified_record, write_certified

STATE_NAME = "state.pt"


@torch.no_grad()
def class_counts(model: nn.Module, x: torch.Tensor, sigma: float, num: int, batch_size: int,
                 generator: torch.Generator, num_classes: int) -> torch.Tensor:
    """How often the base classifier returns each class on `num` copies of x + N(0, sigma^2 I).

    Counted on the device with index_add_: torch.bincount would wait for the GPU twice per batch (it reads the
    largest class back to size its output), leaving it idle between batches.
    """
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    for start in range(0, num, batch_size):
        size = min(batch_size, num - start)
        noise = torch.randn((size, *x.shape), generator=generator, device=x.device) * sigma
        predicted = model(x.unsqueeze(0) + noise).argmax(1)
        counts.index_add_(0, predicted, torch.ones_like(predicted))
    return counts


def certify_point(model: nn.Module, x: torch.Tensor, sigma: float, cfg: dict[str, Any], seed: int, index: int,
                  num_classes: int) -> tuple[int, float | None, int]:
    """(predicted class, certified radius or None for an abstention, count of that class among the n)."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(int(np.random.SeedSequence([seed, 7, index]).generate_state(1)[0]))
    selection = class_counts(model, x, sigma, cfg["n0"], cfg["batch_size"], generator, num_classes)
    top = int(selection.argmax())
    hits = int(class_counts(model, x, sigma, cfg["n"], cfg["batch_size"], generator, num_classes)[top])
    return top, certified_radius(lower_confidence_bound(hits, cfg["n"], cfg["alpha"]), sigma), hits


def chosen_points(cfg: dict[str, Any], available: int, test_path: Path) -> np.ndarray:
    """Every skip-th test point, up to n_examples (Cohen et al.'s --skip); fewer only where params allow it."""
    indices = np.arange(0, available, cfg["skip"])
    if len(indices) < cfg["n_examples"] and not cfg["allow_fewer"]:
        raise UserError(f"{test_path}: every {cfg['skip']}th of its {available} test points gives {len(indices)}, but "
                        f"certify.n_examples = {cfg['n_examples']}; lower certify.n_examples or certify.skip, or set "
                        f"certify.allow_fewer: true to certify all {len(indices)} (the result then says partial: true)")
    return indices[:cfg["n_examples"]]


def _key(checkpoint: Path, test_path: Path, sigma: float, cfg: dict[str, Any], seed: int) -> str:
    """What each saved row depends on: a change to any of it makes them another run's. `batch_size` is in it (the
    noise is drawn a batch at a time); `n_examples` is not: the points are a prefix of every skip-th one, so a run
    asked for fewer keeps the first rows and one asked for more goes on from them."""
    inputs = {"checkpoint": io.sha256(checkpoint), "test": io.sha256(test_path), "sigma": sigma, "seed": seed,
              **{k: cfg[k] for k in ("n0", "n", "alpha", "skip", "batch_size")}}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def certify(settings: dict[str, Any], sigma: float, checkpoint: Path, test_path: Path, result_out: Path,
            work_dir: Path, restart: bool = False) -> None:
    cfg, seed = settings["certify"], settings["seed"]
    sigma = check_sigma(sigma, "certify --sigma")
    num_classes = settings["dataset"]["num_classes"]
    model, ckpt = load_classifier(checkpoint, num_classes, device())
    trained_at = ckpt["meta"].get("sigma")
    if trained_at is not None and trained_at != sigma:
        print(f"certify: warning: {checkpoint} was trained at sigma={trained_at}, certified at sigma={sigma}",
              file=sys.stderr)
    clock = StageClock("certify", ckpt["meta"])
    images, labels = io.load_images(test_path, num_classes)
    indices = chosen_points(cfg, len(images), test_path)
    key = _key(checkpoint, test_path, sigma, cfg, seed)
    state_file = StateFile(Path(work_dir) / STATE_NAME, ("key", "rows"))
    resumed = state_file.load(lambda s: None if s["key"] == key else "made for another model, test set or params",
                              print, restart)
    rows: list[dict[str, Any]] = resumed[1]["rows"][:len(indices)] if resumed else []
    if rows:
        print(f"certify: resuming from {resumed[0]}: {len(rows)} of {len(indices)} points already certified")
    started = time.perf_counter()
    for position in range(len(rows), len(indices)):
        index = int(indices[position])
        x = to_tensor(images[index:index + 1], device())[0]
        point_started = time.perf_counter()
        prediction, radius, hits = certify_point(model, x, sigma, cfg, seed, index, num_classes)
        rows.append({"index": index, "label": int(labels[index]), "prediction": None if radius is None else prediction,
                     "radius": radius, "hits": hits, "seconds": round(time.perf_counter() - point_started, 4)})
        state_file.save({"key": key, "rows": rows})
        if (position + 1) % max(1, len(indices) // 10) == 0:
            print(f"certify: {position + 1}/{len(indices)} points", flush=True)
    x_all = to_tensor(images[indices], device())
    y_all = torch.from_numpy(np.asarray(labels)[indices]).to(device())
    base_clean = accuracy(model, x_all, y_all, cfg["batch_size"])
    record = certified_record(settings, sigma, rows, ckpt, checkpoint, test_path, len(images),
                              base_clean, clock.meta(), time.perf_counter() - started)
    write_certified(record, result_out)
    summary = ", ".join(f"{r}: {a:.1%}" for r, a in record["certified_accuracy"].items())
    print(f"certify: sigma={sigma:g}, {len(rows)} points, n={cfg['n']}: certified accuracy at radius {summary}; "
          f"abstained on {record['abstention_rate']:.1%}; wrote {result_out}")
