"""Under bf16 autocast (a GPU's training and attacks) the classifiers normalise and run their first convolution in
float32, so the small steps of an attack reach the network: on a CPU's bf16 the same rounding happens as on a GPU's."""

from __future__ import annotations

import pytest
import torch

from genrobust.models.checkpoint import build_classifier

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def first_layer(model: torch.nn.Module) -> torch.nn.Module:
    return model.init_conv if hasattr(model, "init_conv") else model.conv_2d


def moved(model: torch.nn.Module, x: torch.Tensor, step: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Which outputs of the first layer change when the input moves by `step`, as the network computes it."""
    outputs = []
    hook = first_layer(model).register_forward_hook(lambda module, args, out: outputs.append(out.float()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)
        model(x + step)
    hook.remove()
    return outputs[1] != outputs[0]


@pytest.mark.parametrize("arch", [{"arch": "wrn", "depth": 10, "width": 1},
                                  {"arch": "preact_resnet", "depth": 18, "width": 0}])
@pytest.mark.parametrize("scale", [0.001, 0.0005])    # TRADES' start noise; an L2 step spread over 3072 pixels
def test_a_bf16_attack_moves_the_first_layer_as_an_fp32_one(arch: dict, scale: float) -> None:
    torch.manual_seed(0)
    model = build_classifier({**arch, "activation": "relu"}, 10, CIFAR_MEAN, CIFAR_STD).eval()
    x = torch.rand(4, 3, 32, 32)
    step = scale * torch.randn_like(x)
    fp32, bf16 = moved(model, x, step, bf16=False), moved(model, x, step, bf16=True)
    assert fp32.float().mean() > 0.99
    assert torch.equal(bf16, fp32)


def test_without_the_fp32_stem_bf16_rounds_much_of_the_step_away() -> None:
    """What the stem prevents: the same convolution fed bf16-rounded normalised inputs."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    x = torch.rand(4, 3, 32, 32)
    step = 0.001 * torch.randn_like(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        same = conv((x - mean) / std) == conv((x + step - mean) / std)
    assert same.float().mean() > 0.2
