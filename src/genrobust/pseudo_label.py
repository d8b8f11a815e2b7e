"""The `pseudo_label` stage: the standard classifier scores every generated image, and a fraction is kept.

Two recipes (params `pseudo_label.mode`):
- `confidence` (Gowal et al. 2021): the label is the classifier's argmax and the score its
  probability, since a weak or unconditional generator's samples need not look like their class.
- `conditioning` (Wang et al. 2023): the label stays the class the image was generated for and the
  score is the classifier's probability of that class, so the kept images are those that look
  most like what they were asked to be; with `sample.oversample: 5` and `keep_fraction: 0.2`
  this is the paper's "generate 5x, keep the best 20% per class". An unconditional image (label -1,
  Gowal et al.'s DDPM) has no such class: it takes the classifier's argmax, as in `confidence`.
- `arc` (Sehwag et al. 2022): the label is the conditioning class (the classifier's argmax for an
  unconditional image) and the score is the probability of "real" given by the robust
  real-vs-generated discriminator that the quality stage trained (`quality.arc.select_eps`), so
  the kept images are the hardest to tell from real data under perturbation.
Either way exactly the top `keep_fraction` per class (by that label) is kept. The set's quality
figures (quality.json) go into labels.npz's meta, and from there into every model and result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import io
from .data.transform import to_tensor
from .distributed import device
from .errors import UserError
from .models.checkpoint import load_classifier
from .provenance import StageClock, meta_array
from .quality.arc import real_probability
from .shards import ShardSet, filtered


class Scores(NamedTuple):
    """Per generated image: its conditioning class, the classifier's argmax, the two probabilities, and the
    robust discriminator's probability that it is real."""

    conditioned: np.ndarray
    predicted: np.ndarray
    p_conditioned: np.ndarray
    p_predicted: np.ndarray
    p_real: np.ndarray


class Selection(NamedTuple):
    label: np.ndarray       # what adv_train trains on
    confidence: np.ndarray  # the score the selection ranked by
    keep: np.ndarray        # bool


def keep_most_confident(labels: np.ndarray, confidence: np.ndarray, fraction: float, num_classes: int) -> np.ndarray:
    """Per class in `labels`, keep the ceil(fraction * count) highest `confidence` (ties: lower index first).

    The product is rounded first so that float error (0.7 * 10 = 7.000000000000001) keeps no extra image.
    """
    keep = np.zeros(len(labels), dtype=bool)
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        count = int(np.ceil(round(fraction * len(members), 6)))
        order = members[np.argsort(-confidence[members], kind="stable")]
        keep[order[:count]] = True
    return keep


def select(scores: Scores, mode: str, fraction: float, num_classes: int,
           unscored: np.ndarray | None = None) -> Selection:
    """The labels and the kept images of `mode` (the schema allows only these three).

    An image without a conditioning class (label -1: Gowal et al.'s unconditional DDPM, an imported set labelled by
    the classifier) takes the classifier's argmax in every mode. `unscored`: images the arc mode's discriminator
    trained on; its score of them says nothing, so they are
    never kept (they rank last and are dropped).
    """
    unconditional = scores.conditioned < 0     # no class to keep: Gowal et al. label those by the classifier
    label, confidence = {"conditioning": (np.where(unconditional, scores.predicted, scores.conditioned),
                                          np.where(unconditional, scores.p_predicted, scores.p_conditioned)),
                         "confidence": (scores.predicted, scores.p_predicted),
                         "arc": (np.where(scores.conditioned >= 0, scores.conditioned, scores.predicted),
                                 scores.p_real)}[mode]
    if unscored is None or not len(unscored):
        return Selection(label, confidence, keep_most_confident(label, confidence, fraction, num_classes))
    ranked = confidence.copy()
    ranked[unscored] = -np.inf
    keep = keep_most_confident(label, ranked, fraction, num_classes)
    keep[unscored] = False
    return Selection(label, confidence, keep)


@torch.no_grad()
def score(model: torch.nn.Module, discriminator: torch.nn.Module, shards: ShardSet, batch_size: int,
          target: torch.device) -> Scores:
    """Classify and discriminate every generated image, a batch at a time (the shards stay memory-mapped)."""
    count = len(shards)
    conditioned = np.empty(count, dtype=np.int64)
    predicted = np.empty(count, dtype=np.int64)
    p_conditioned = np.empty(count, dtype=np.float32)
    p_predicted = np.empty(count, dtype=np.float32)
    p_real = np.empty(count, dtype=np.float32)
    start = 0
    for images, labels in shards.batches(batch_size):
        stop = start + len(images)
        probs = torch.softmax(model(to_tensor(images, target)).float(), dim=1).cpu()
        best, index = probs.max(dim=1)
        # An unconditional image (label -1) has no conditioning class: its probability is NaN.
        of_label = probs.gather(1, torch.from_numpy(labels).clamp(min=0)[:, None])[:, 0]
        of_label[torch.from_numpy(labels) < 0] = float("nan")
        conditioned[start:stop], predicted[start:stop] = labels, index.numpy()
        p_conditioned[start:stop], p_predicted[start:stop] = of_label.numpy(), best.numpy()
        p_real[start:stop] = real_probability(discriminator, images, target)
        start = stop
    return Scores(conditioned, predicted, p_conditioned, p_predicted, p_real)


def quality_summary(quality_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The headline figures of quality.json, as every later artifact carries them, and its stage times."""
    quality = io.read_json(quality_path)
    try:
        return ({"fid": quality["fid"]["value"], "classifier_fd": quality["classifier_fd"]["value"],
                 "class_agreement": quality["class_agreement"]["overall"], "arc": quality["arc"]["value"],
                 "images": quality["images"]}, quality.get("meta", {}))
    except (KeyError, TypeError) as exc:
        raise UserError(f"{quality_path}: not a quality.json written by the quality stage (no {exc})") from exc


def pseudo_label(settings: dict[str, Any], classifier_path: Path, shard_dir: Path, quality_path: Path,
                 discriminator_path: Path, labels_out: Path) -> None:
    num_classes, cfg = settings["dataset"]["num_classes"], settings["pseudo_label"]
    shards = ShardSet.open(shard_dir, verify=True)
    model, ckpt = load_classifier(classifier_path, num_classes, device())
    discriminator, _ = load_classifier(discriminator_path, 2, device())
    quality, quality_meta = quality_summary(quality_path)
    clock = StageClock("pseudo_label", ckpt["meta"], shards.manifest.get("meta", {}), quality_meta)
    scores = score(model, discriminator, shards, cfg["batch_size"], device())
    generator = shards.manifest.get("generator", settings["generator"])
    keep_fraction = cfg["keep_fraction"] if filtered(settings["sample"], generator) else 1.0
    unscored = None
    if cfg["mode"] == "arc":
        trained_on = io.read_json(quality_path)["arc"].get("discriminator_trained_on", [])
        unscored = np.asarray(trained_on, dtype=np.int64)
        print(f"pseudo_label (arc): {len(unscored)} images trained the discriminator; they are not scored or kept")
    chosen = select(scores, cfg["mode"], keep_fraction, num_classes, unscored)
    agreement = float((scores.conditioned == scores.predicted).mean()) if len(shards) else float("nan")
    kept = int(chosen.keep.sum())
    io.save_npz(labels_out, label=chosen.label, confidence=chosen.confidence, keep=chosen.keep,
                meta=meta_array(clock.meta(mode=cfg["mode"], kept=kept, agreement_with_conditioning=agreement,
                                               generated_quality=quality)))
    print(f"pseudo_label ({cfg['mode']}): kept {kept}/{len(shards)} images; the classifier agrees with the "
          f"conditioning class on {agreement:.1%}; wrote {labels_out}")
