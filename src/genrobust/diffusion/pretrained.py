"""`diffusion.pretrained`: a released EDM model (NVlabs' pickle) becomes the dataset's diffusion model file.

Wang et al. did not train a CIFAR-10 generator: they sampled EDM's released `edm-cifar10-32x32-cond-vp.pkl`
(and DM-Improves-AT's own CIFAR-100 and SVHN pickles). With `diffusion.pretrained: {cifar10: PATH}` the
train_diffusion stage reads that file (safely, `released`), checks it against the dataset and writes the same
model file training would, so sampling, quality and everything after it are unchanged; nothing is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from .. import io
from ..errors import UserError
from ..provenance import StageClock
from .augment import LABEL_DIM
from .model import FORMAT, build_model
from .released import released_network
from .resize import IMAGE_SIZE

SETTINGS = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout", "label_dropout")
DEFAULTS = {"num_blocks": 4, "attn_resolutions": [16], "dropout": 0.10, "label_dropout": 0, "augment_dim": 0,
            "sigma_data": 0.5}   # SongUNet's / EDMPrecond's own defaults, for kwargs a pickle leaves out


def released_config(kwargs: Mapping[str, Any], edm: Mapping[str, Any], num_classes: int, path: Path) -> dict[str, Any]:
    """Our model config for a released network's construction kwargs, or a UserError naming what does not fit."""
    values = {**DEFAULTS, **kwargs}
    if values.get("label_dim") != num_classes:
        raise UserError(f"{path}: the network has label_dim = {values.get('label_dim')}, the dataset has "
                        f"{num_classes} classes (a class-conditional model of this dataset is needed)")
    if values.get("img_channels") != 3 or not 4 <= values.get("img_resolution", 0) <= IMAGE_SIZE:
        raise UserError(f"{path}: the network makes {values.get('img_channels')}-channel images of "
                        f"{values.get('img_resolution')} pixels; the pipeline needs 3 channels, at most {IMAGE_SIZE}")
    if values["augment_dim"] not in (0, LABEL_DIM):
        raise UserError(f"{path}: augment_dim = {values['augment_dim']}; EDM's pipeline has {LABEL_DIM} labels or none")
    return {"arch": "ddpmpp", "ddpmpp": {key: values[key] for key in SETTINGS},
            "edm": {**edm, "sigma_data": values["sigma_data"]}, "resolution": values["img_resolution"],
            "augment_p": 0.0, "augment_dim": values["augment_dim"]}


def import_pretrained(settings: Mapping[str, Any], generator: str, pickle_path: Path, model_out: Path) -> None:
    """Write `model_out` from the released pickle: its EMA weights, our config, the pickle's hash as provenance."""
    if generator != "edm":
        raise UserError(f"diffusion.pretrained: released EDM models serve generator 'edm', not {generator!r}")
    num_classes = settings["dataset"]["num_classes"]
    kwargs, tensors = released_network(pickle_path)
    config = released_config(kwargs, settings["diffusion"]["edm"], num_classes, pickle_path)
    model = build_model(generator, config, num_classes)
    state = {f"net.{key}": value for key, value in tensors.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{pickle_path}: its tensors do not fit DDPM++ built from its own settings ({exc})") from exc
    print(f"train_diffusion {generator}: imported {pickle_path} ({sum(p.numel() for p in model.parameters()):,} "
          "parameters); nothing trained", flush=True)
    clock = StageClock("train_diffusion", {})
    checkpoint = {"format": FORMAT, "generator": generator, "config": config, "num_classes": num_classes,
                  "state_dict": model.state_dict(),
                  "meta": clock.meta(generator=generator, steps=0, resumed_from_step=0,
                                     pretrained=str(pickle_path), pretrained_sha256=io.sha256(pickle_path))}
    with io.atomic_path(model_out) as tmp:
        torch.save(checkpoint, tmp)
