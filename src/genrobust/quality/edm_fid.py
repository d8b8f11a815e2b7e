"""FID as EDM reports it (NVlabs/edm fid.py), so a generated set's FID can stand beside published numbers.

EDM's 1.79 is the minimum over three generations of 50,000 images from fresh random seeds, each
against the statistics of the whole training set, with TF1's Inception and resize (`tf_inception`).
Here a generation is a seeded random subset of `quality.num_images` of the generated set: disjoint
subsets while the set holds enough images (as fresh seeds would be), else independent ones that
share images, which quality.json says (`disjoint_draws`). The real statistics are computed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .frechet import features_stats, frechet_distance
from .tf_inception import load_tf_inception, tf_features

Batches = Callable[[], Iterator[np.ndarray]]

PROTOCOL = ("EDM (NVlabs/edm fid.py): TF1 InceptionV3 pool3 with TF1 bilinear resize to 299 (torch-fidelity), "
            "real statistics of the whole training set, minimum over draws of seeded random generated subsets")


def draw_subsets(total: int, count: int, draws: int, seed: int) -> tuple[list[np.ndarray], bool]:
    """`draws` seeded random index sets of `count` of `total`, each sorted (shards are read in order), and
    whether they are disjoint: they are when `count * draws <= total`."""
    if count * draws <= total:
        order = np.random.default_rng(seed).permutation(total)
        return [np.sort(order[i * count:(i + 1) * count]) for i in range(draws)], True
    return [np.sort(np.random.default_rng([seed, i]).choice(total, count, replace=False)) for i in range(draws)], False


def fid_edm(weights: Path | None, missing: str | None, real: Batches,
            generated: Callable[[np.ndarray], Batches], total: int, count: int, draws: int, seed: int,
            batch_size: int, target: torch.device) -> dict[str, Any]:
    """quality.json's `fid_edm`: the minimum over `draws` FIDs, every draw's value, and how they were made.

    `real` yields the whole training set; `generated(index)` the generated images at `index`. Without
    weights the value is null and `missing` says why; a weights file of another hash is a UserError.
    """
    if weights is None:
        return {"value": None, "reason": missing, "protocol": PROTOCOL}
    network, digest = load_tf_inception(weights, target)

    def extract(images: np.ndarray) -> np.ndarray:
        return tf_features(network, images, target, batch_size)

    reference = features_stats(extract, real())
    subsets, disjoint = draw_subsets(total, count, draws, seed)
    values = []
    for index in subsets:
        stats = features_stats(extract, generated(index)())
        values.append(frechet_distance(stats.mean, stats.cov, reference.mean, reference.cov))
    return {"value": min(values), "draws": values, "images_per_draw": count, "disjoint_draws": disjoint,
            "real_images": reference.count, "protocol": PROTOCOL,
            "features": "TF1 InceptionV3 pool3, 2048-d (torch-fidelity's FeatureExtractorInceptionV3)",
            "weights": str(weights), "weights_sha256": digest}
