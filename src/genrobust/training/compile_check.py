"""How many graphs torch.compile makes for compiled training: each forward once, however many steps.

TRADES with gradient accumulation compiles three: the attack's forward without and with grad, and the final
forward (the momentum-1 first step runs eagerly; compiled, it doubled them). More would mean a recompile on
some step. `tests/test_loader.py` counts them on a CPU, `benchmarks/gpu_check.py` on the GPU.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
import torch._dynamo
from torch import nn

from .loop import Recipe, TrainingData, fit
from .mixing import BatchMixer

EXPECTED_GRAPHS = 3


def compiled_graphs(model: nn.Module, data: TrainingData, mixer: BatchMixer, recipe: Recipe,
                    backend: str | None = None) -> int:
    """Unique graphs after `fit` with `recipe` (compile=True); `backend` "eager" skips code generation, which is
    all a CPU check needs and much faster."""
    torch._dynamo.reset()
    compile_ = torch.compile
    if backend is not None:
        torch.compile = functools.partial(compile_, backend=backend)
    try:
        with tempfile.TemporaryDirectory() as work:
            fit(model, data, mixer, recipe, Path(work), log=lambda _: None)
    finally:
        torch.compile = compile_
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs
