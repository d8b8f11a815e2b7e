"""The `adv_train` stage: TRADES or PGD-AT on batches that mix real and pseudo-labelled generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..attacks.threat import Threat
from .mixed import Outputs, train_on_mix


def adv_train(settings: dict[str, Any], threat: str, train_path: Path, outputs: Outputs, work_dir: Path,
              shard_dir: Path | None = None, labels_path: Path | None = None, num_generated: int | None = None,
              restart: bool = False) -> None:
    cfg, attack = settings["adv_train"], settings["threats"][threat]
    objective = dict(loss=cfg["loss"], threat=Threat.from_params(attack), attack_steps=cfg["attack_steps"],
                     beta=cfg["beta"], label_smoothing=cfg["label_smoothing"], trades_attack=cfg["trades_attack"])
    train_on_mix("adv_train", settings, objective, f"{cfg['loss']} at {attack['norm']} eps={attack['eps']:.4g}",
                 train_path, outputs, work_dir, shard_dir, labels_path, num_generated, restart,
                 threat=threat, attack_steps=cfg["attack_steps"])
