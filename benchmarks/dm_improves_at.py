"""Import DM-Improves-AT (Wang et al. 2023) from the user's checkout, to measure it beside genrobust.

Nothing of the reference is vendored: `load(path)` puts a checkout of
github.com/wzekai99/DM-Improves-AT (commit b390f25d) on sys.path for this process only. Its
optional imports get stand-ins (pandas' DataFrame as WATrainer.train uses it, tqdm, RandAugment),
`autoattack` is PyPI's `pyautoattack`, and `Tensor.cuda` is the identity where there is no GPU.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import torch


class Rows:
    """pandas.DataFrame as WATrainer.train uses it (pandas 2 dropped `append`): rows of metrics, then mean()."""

    def __init__(self, rows: list | None = None) -> None:
        self.rows = rows or []

    def append(self, other: "Rows", ignore_index: bool = True) -> "Rows":
        return Rows(self.rows + other.rows)

    def mean(self) -> dict:
        return {k: float(np.mean([r[k] for r in self.rows])) for k in self.rows[0]}


def load(path: str) -> types.SimpleNamespace:
    """parser_train, WATrainer and ema_update from the checkout at `path`."""
    sys.path.insert(0, path)
    import torchvision  # noqa: F401  (before the stand-ins: torch._dynamo inspects installed modules)
    for name, attrs in {"pandas": {"DataFrame": lambda d=None, index=None: Rows([d] if d else [])},
                        "tqdm": {"tqdm": lambda it, *a, **k: it}, "RandAugment": {"RandAugment": object}}.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    import pyautoattack
    import pyautoattack.autopgd_base
    sys.modules.setdefault("autoattack", pyautoattack)
    sys.modules.setdefault("autoattack.autopgd_base", pyautoattack.autopgd_base)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    from core.utils import parser_train
    from gowal21uncovering.utils import WATrainer
    from gowal21uncovering.utils.watrain import ema_update
    return types.SimpleNamespace(parser_train=parser_train, WATrainer=WATrainer, ema_update=ema_update)


def trainer(ref: types.SimpleNamespace, depth: int, width: int, batch: int, epochs: int, seed: int = 1,
            attack: str = "linf-pgd", eps: float = 8 / 255, step: float = 2 / 255, attack_steps: int = 10,
            beta: float | None = 5.0) -> Any:
    """A WATrainer as train-wa.py builds it (lr 0.2, ls 0.1, tau 0.995, Nesterov SGD, cosinew), on CIFAR-10 shapes."""
    argv = ["--desc", "genrobust", "--data", "cifar10s", "--batch-size", str(batch), "--seed", str(seed),
            "--attack", attack, "--attack-eps", str(eps), "--attack-step", str(step),
            "--attack-iter", str(attack_steps), "--num-adv-epochs", str(epochs), "--lr", "0.2", "--ls", "0.1"]
    args = ref.parser_train().parse_args(argv + (["--beta", str(beta)] if beta is not None else []))
    args.model, args.tau = f"wrn-{depth}-{width}-swish", 0.995    # create_model accepts any wrn-D-W-swish
    made = ref.WATrainer({"data": "cifar10s", "num_classes": 10}, args)
    made.init_optimizer(epochs)          # as train-wa.py does again before training
    return made
