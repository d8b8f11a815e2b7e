"""NVlabs' own modules, imported from a scratch checkout at run time, since their licence keeps them out of the project."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch

from .configs import net_kwargs


def load(edm: str) -> types.SimpleNamespace:
    """NVlabs' modules from the checkout at `edm` (put first on sys.path for this process)."""
    sys.path.insert(0, str(Path(edm).resolve()))
    import dnnlib
    import generate
    from torch_utils import distributed, misc, persistence
    from training import dataset, loss, networks, training_loop
    return types.SimpleNamespace(dnnlib=dnnlib, generate=generate, distributed=distributed, misc=misc,
                                 persistence=persistence, dataset=dataset, loss=loss, networks=networks,
                                 training_loop=training_loop)


def build(ref: types.SimpleNamespace, cfg: dict[str, Any]) -> torch.nn.Module:
    """EDMPrecond built right after torch.manual_seed(0), the seed the init figures and recipe assume."""
    torch.manual_seed(0)
    return ref.networks.EDMPrecond(**net_kwargs(cfg))


def commit_of(edm: str) -> str:
    """The checkout's HEAD, so the JSON says which code measured it ('unknown' without git)."""
    try:
        return subprocess.run(["git", "-C", edm, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
