"""Our checkpoints load into RobustBench's own architectures and give the same logits.

`import robustbench` fails next to pyautoattack (its eval.py imports `autoattack` and it needs
pkg_resources), so the architecture file, which needs only torch, is loaded by its path
inside the installed package: the real leaderboard code, not a copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from genrobust.models.checkpoint import build_classifier, load_classifier, save_classifier
from genrobust.models.robustbench import robustbench_state_dict


def _dm_architectures() -> ModuleType:
    spec = importlib.util.find_spec("robustbench")
    assert spec is not None, "robustbench is part of the test extra: pip install -e '.[test]'"
    path = Path(spec.submodule_search_locations[0]) / "model_zoo" / "architectures" / "dm_wide_resnet.py"
    module_spec = importlib.util.spec_from_file_location("dm_wide_resnet", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("spec", [
    {"arch": "wrn", "depth": 28, "width": 10, "activation": "silu"},
    {"arch": "wrn", "depth": 16, "width": 2, "activation": "relu"},
    {"arch": "preact_resnet", "depth": 18, "width": 0, "activation": "silu"},
])
def test_checkpoint_loads_into_robustbench_and_gives_the_same_logits(tmp_path: Path, spec: dict) -> None:
    dm = _dm_architectures()
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    torch.manual_seed(0)
    ours = build_classifier(spec, 10, mean, std)
    for module in ours.modules():       # non-trivial batch-norm statistics, so a mix-up of them would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    save_classifier(tmp_path / "model.pt", ours, spec, 10, {})
    ours, ckpt = load_classifier(tmp_path / "model.pt", 10)

    state, rb_mean, rb_std = robustbench_state_dict(ckpt)
    architecture = dm.DMWideResNet if spec["arch"] == "wrn" else dm.DMPreActResNet
    activation = dm.Swish if spec["activation"] == "silu" else torch.nn.ReLU
    theirs = architecture(num_classes=10, depth=spec["depth"], width=spec["width"], activation_fn=activation,
                          mean=tuple(rb_mean), std=tuple(rb_std))
    theirs.load_state_dict(state, strict=True)
    theirs.eval()

    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = ours(x), theirs(x)
    assert torch.allclose(expected, got, atol=1e-5, rtol=1e-4), (expected - got).abs().max()
