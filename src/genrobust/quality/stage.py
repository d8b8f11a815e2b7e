"""The `quality` stage: judge a generated set before adversarial training uses it.

Five figures, each answering a different question, written to `quality.json` beside the set:
- FID (Inception features, the number generative-model papers report; Wang et al. rank their
  diffusion models by it), twice: `fid` as pytorch-fid computes it, and `fid_edm` by EDM's protocol
  (TF1 resize, whole training set, best of `quality.fid_draws`; see `edm_fid`), the one that compares
  with published numbers. Both need the FID Inception weights, so without them they are null, with why.
- classifier FD: the same Fréchet distance on the standard classifier's penultimate features, which
  works offline, on any dataset, and sees the data as the pipeline's own classifier does.
- class agreement: how often that classifier's argmax is the class an image was generated for,
  per class (a class-conditional generator that ignores its class fails here, whatever its FID).
- ARC (Sehwag et al.): how long the sets stay distinguishable to a robust discriminator; see `arc`.
The discriminator ARC trains at `quality.arc.select_eps` is saved too: pseudo_label's `arc` mode ranks by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from .. import io
from ..data.transform import to_tensor
from ..distributed import device
from ..models.checkpoint import load_classifier, save_classifier
from ..provenance import StageClock, read_meta
from ..shards import ShardSet
from . import arc
from .edm_fid import fid_edm
from .frechet import FeatureStats, features_stats, frechet_distance
from .inception import load_inception, make_extractor, resolve_weights

Batches = Callable[[], Iterator[np.ndarray]]


def subset(total: int, count: int, seed: int) -> np.ndarray:
    """A seeded random choice of `count` of `total` indices, in increasing order (shards are read in order).

    Never the first `count`: an imported set keeps its file's order, which may be sorted by class.
    """
    return np.sort(np.random.default_rng(seed).choice(total, count, replace=False))


def _batches(images: Callable[[np.ndarray], np.ndarray], index: np.ndarray, batch_size: int) -> Batches:
    """A re-iterable source of uint8 NHWC batches of the images at `index`, read a batch at a time."""
    def iterate() -> Iterator[np.ndarray]:
        for start in range(0, len(index), batch_size):
            yield images(index[start:start + batch_size])
    return iterate


@torch.no_grad()
def penultimate(model: nn.Module, target: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """Features that the classifier's last linear layer sees: what "looks alike" means to the pipeline's model."""
    last = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))

    def extract(images: np.ndarray) -> np.ndarray:
        captured.clear()
        model(to_tensor(images, target))
        return captured[0].double().cpu().numpy()
    return extract


@torch.no_grad()
def class_agreement(model: nn.Module, generated: Batches, labels: np.ndarray, num_classes: int,
                    target: torch.device) -> dict[str, Any]:
    """Overall and per-class share of images the classifier puts in their conditioning class."""
    if (labels < 0).any():
        return {"overall": None, "per_class": None, "reason": "the set is unconditional (label -1): no class to agree with"}
    predicted = np.concatenate([model(to_tensor(batch, target)).argmax(1).cpu().numpy() for batch in generated()])
    hits = predicted == labels
    per_class = [float(hits[labels == k].mean()) if (labels == k).any() else None for k in range(num_classes)]
    return {"overall": float(hits.mean()), "per_class": per_class}


def fid(weights: Path | None, missing: str | None, real: Batches, generated: Batches, target: torch.device,
        batch_size: int) -> dict[str, Any]:
    """pytorch-fid's FID of the two subsets; null with `missing` (why) when there are no weights."""
    network, reason = (None, missing) if weights is None else load_inception(weights, target)
    if network is None:
        return {"value": None, "reason": reason, "protocol": "pytorch-fid"}
    extract = make_extractor(network, target, batch_size)
    return {"value": _distance(features_stats(extract, real()), features_stats(extract, generated())),
            "protocol": "pytorch-fid", "features": "InceptionV3 pool3, 2048-d (pytorch-fid's FID weights)"}


def _distance(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def quality(settings: Mapping[str, Any], shard_dir: Path, train_path: Path, classifier_path: Path,
            out: Path, discriminator_out: Path) -> None:
    cfg, num_classes, target = settings["quality"], settings["dataset"]["num_classes"], device()
    shards = ShardSet.open(shard_dir, verify=True)
    arrays = io.open_npz(train_path)
    real_images, _ = io.validate_images(train_path, arrays, num_classes)
    classifier, ckpt = load_classifier(classifier_path, num_classes, target)
    clock = StageClock("quality", shards.manifest.get("meta", {}), read_meta(arrays), ckpt["meta"])
    count = min(len(shards), cfg["num_images"] or len(shards))
    real_count = min(len(real_images), cfg["num_images"] or len(real_images))
    chosen, real_chosen = subset(len(shards), count, settings["seed"]), subset(len(real_images), real_count,
                                                                              settings["seed"] + 1)
    generated = _batches(lambda index: shards.take(index)[0], chosen, cfg["batch_size"])
    real = _batches(lambda index: np.asarray(real_images[index]), real_chosen, cfg["batch_size"])
    labels = np.concatenate([np.asarray(part) for part in shards.labels])[chosen]   # labels only: no image read
    weights, missing = resolve_weights(cfg["inception_weights"] or None, allow_download=cfg["inception_download"])
    whole_train = _batches(lambda index: np.asarray(real_images[index]), np.arange(len(real_images)),
                           cfg["batch_size"])
    edm = fid_edm(weights, missing, whole_train,   # first: a wrong weights file stops the stage before ARC trains
                  lambda index: _batches(lambda part: shards.take(part)[0], index, cfg["batch_size"]),
                  len(shards), count, cfg["fid_draws"], settings["seed"] + 4, cfg["batch_size"], target)

    features = penultimate(classifier, target)
    arc_cfg = arc.ArcConfig.from_params(cfg["arc"])
    arc_images = min(arc_cfg.images, len(shards), len(real_images))   # per side
    arc_generated = subset(len(shards), arc_images, settings["seed"] + 2)
    figures, selector, trained = arc.measure(
        np.asarray(real_images[subset(len(real_images), arc_images, settings["seed"] + 3)]),
        shards.take(arc_generated)[0], arc_cfg, settings["seed"], target)
    figures["discriminator_trained_on"] = arc_generated[trained].tolist()   # pseudo_label's arc mode skips them
    result = {
        "generator": shards.manifest.get("generator", settings["generator"]),
        "images": count, "real_images": real_count, "subset": "seeded random, not the first N",
        "fid": fid(weights, missing, real, generated, target, cfg["batch_size"]),
        "fid_edm": edm,
        "classifier_fd": {"value": _distance(features_stats(features, real()), features_stats(features, generated())),
                          "features": f"penultimate layer of {classifier_path}"},
        "class_agreement": class_agreement(classifier, generated, labels, num_classes, target),
        "arc": figures,
        "meta": clock.meta(),
    }
    save_classifier(discriminator_out, selector, cfg["arc"]["model"], 2,
                    clock.meta(role="ARC robust discriminator (class 1: real)", eps=arc_cfg.select_eps))
    io.write_json(out, result)
    agreement = result["class_agreement"]["overall"]
    print(f"quality: {count} images; FID {result['fid']['value']} (EDM protocol: {edm['value']}), "
          f"classifier FD {result['classifier_fd']['value']:.2f}, "
          f"class agreement {'n/a' if agreement is None else f'{agreement:.1%}'}, ARC {figures['value']:.4f}; wrote {out}")
