"""Our DDPM++, EDM loss, EDM training step and Heun sampler against figures measured from NVlabs' own code.

The figures (`tests/golden/edm_008a4e5.npz`, `.json`) were made by `tests/golden/edm_figures.py` from
NVlabs/edm at commit 008a4e5, imported at run time from a scratch checkout: figures of the network's initial
state_dict after `torch.manual_seed(0)` (sum, norm, projection and sampled elements of each tensor), its outputs
for perturbed weights (rebuilt here from our own init by the figures script's `perturb`), EDMLoss for recorded
sigma and noise draws, figures of the weights and EMA after three steps of their training loop, and
`edm_sampler`'s images. The last tests revert one
item of the recipe at a time and show the comparison then fails.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust.diffusion.ddpmpp import DDPMpp, DDPMppSettings
from genrobust.diffusion.edm import EDMPreconditioned, edm_loss, heun_sample, sigma_schedule
from genrobust.diffusion.recipe import HalfLifeEMA, Recipe, apply_step, make_optimizer
from genrobust.diffusion.sample import to_uint8

from .golden.edm_reference.convert import figures_of
from .golden.edm_reference.figures import perturb

GOLDEN = Path(__file__).parent / "golden" / "edm_008a4e5"
FIGURES = np.load(GOLDEN.with_suffix(".npz"))
META = json.loads(GOLDEN.with_suffix(".json").read_text())
CONFIGS = ("c32", "c8")
# The reference loop's settings for the three recorded steps (edm_figures.py): batch 4, Adam lr 1e-3 ramped over
# 6 images, EMA half-life 4 images without ramp (tests/golden/edm_reference/configs.py).
STEP_RECIPE = Recipe(batch_size=4, optimizer="adam", lr=1e-3, lr_rampup_images=6, weight_decay=0.0, adam_eps=1e-8,
                     grad_clip=None, ema_halflife_images=4, ema_rampup_ratio=None, ema_decay=None)


def network(config: str) -> EDMPreconditioned:
    kwargs = META["configs"][config]["edmprecond_kwargs"]
    settings = DDPMppSettings(model_channels=kwargs["model_channels"], channel_mult=tuple(kwargs["channel_mult"]),
                              num_blocks=kwargs["num_blocks"], attn_resolutions=tuple(kwargs["attn_resolutions"]),
                              dropout=kwargs["dropout"])
    return EDMPreconditioned(kwargs["img_resolution"], 3, kwargs["label_dim"], kwargs.get("augment_dim", 0),
                             settings, kwargs["sigma_data"])


def golden(prefix: str) -> dict[str, np.ndarray]:
    """The stored weight figures under `prefix`, by tensor name."""
    return {key[len(prefix):]: FIGURES[key] for key in FIGURES.files if key.startswith(prefix)}


def differing(ours: dict[str, torch.Tensor], prefix: str, rtol: float, atol: float) -> list[str]:
    """Names of the tensors whose figures differ from the stored ones by more than an element-wise comparison at
    (rtol, atol) would allow: a sum or projection of n elements may move by n * atol + rtol * its magnitudes."""
    stored = golden(prefix)
    assert list(ours) == list(stored), prefix
    out = []
    for name, tensor in ours.items():
        x = tensor.detach().double().flatten()
        mine, theirs = figures_of(tensor), stored[name]
        n, magnitude = x.numel(), float(x.abs().sum())     # the magnitude bounds the sum and the projection (|sin| <= 1)
        slack = np.concatenate([[n * atol + rtol * magnitude, np.sqrt(n) * atol + rtol * float(x.norm()),
                                 n * atol + rtol * magnitude], atol + rtol * np.abs(mine[3:])])
        if mine.shape != theirs.shape or (np.abs(mine - theirs) > slack).any():
            out.append(name)
    return out


def seeded(config: str) -> EDMPreconditioned:
    """Our network as built after torch.manual_seed(0): the reference's initial weights (first test)."""
    torch.manual_seed(0)
    return network(config)


def loaded(config: str, weights: str) -> EDMPreconditioned:
    """Our seeded network at `init`, or at the figures' perturbed `weights` made from it as the script made them."""
    net = seeded(config)
    if weights == "weights":
        net.load_state_dict(perturb(net))
    return net.eval()


def f(key: str) -> torch.Tensor:
    return torch.from_numpy(FIGURES[key])


@pytest.mark.parametrize("config", CONFIGS)
def test_a_seeded_network_starts_from_the_reference_weights_number_for_number(config: str) -> None:
    assert differing(seeded(config).state_dict(), f"{config}/init/", rtol=0, atol=1e-7) == []
    assert [name for name, _ in network(config).named_parameters()] == META["configs"][config]["param_names"]


def test_the_paper_network_has_edm_cifar10_parameter_count() -> None:
    with torch.device("meta"):
        net = DDPMpp(32, 3, 10, 9, DDPMppSettings())
    assert sum(p.numel() for p in net.parameters()) == META["full_size"]["augment_dim_9"] == 55_735_299


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("labels", ["class_labels", "zero"])
def test_the_denoiser_gives_the_reference_outputs(config: str, labels: str) -> None:
    net = loaded(config, "weights")
    classes = f(f"{config}/fwd/class_labels")
    augment = f(f"{config}/fwd/augment_labels") if f"{config}/fwd/augment_labels" in FIGURES.files else None
    with torch.no_grad():
        out = net(f(f"{config}/fwd/x"), f(f"{config}/fwd/sigma"),
                  classes if labels == "class_labels" else torch.zeros_like(classes), augment)
    expected = f(f"{config}/fwd/out" if labels == "class_labels" else f"{config}/fwd/out_uncond_labels_zero")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_loss_is_the_reference_edm_loss_for_the_same_draws(config: str) -> None:
    net = loaded(config, "weights")
    with torch.no_grad():
        loss = edm_loss(net, f(f"{config}/loss/images"), f(f"{config}/loss/labels"), f(f"{config}/loss/rnd_normal"),
                        f(f"{config}/loss/noise"), None, p_mean=-1.2, p_std=1.2)
    torch.testing.assert_close(loss, f(f"{config}/loss/loss"), rtol=1e-5, atol=1e-5)


Trained = tuple[torch.Tensor, float, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]


def train_three_steps(recipe: Recipe) -> list[Trained]:
    """Our update rule (`recipe.apply_step`) on the reference's recorded batches and draws, per step:
    (loss sum, lr, EMA beta, weights, EMA weights)."""
    net = loaded("c8", "init").train()
    optimizer, ema = make_optimizer(net, recipe), HalfLifeEMA(net, recipe)
    out = []
    for step in (1, 2, 3):
        images_before = (step - 1) * recipe.batch_size
        beta = ema.beta(images_before)
        loss = edm_loss(net, f(f"c8/step{step}/images"), f(f"c8/step{step}/labels"), f(f"c8/step{step}/rnd_normal"),
                        f(f"c8/step{step}/noise"), None, p_mean=-1.2, p_std=1.2)
        optimizer.zero_grad(set_to_none=True)
        (loss.sum() / recipe.batch_size).backward()
        apply_step(net, ema, optimizer, recipe, images_before)
        out.append((loss.sum().detach(), optimizer.param_groups[0]["lr"], beta, {k: v.detach().clone() for k, v in net.named_parameters()},
                    {k: v.detach().clone() for k, v in ema.ema_model.named_parameters()}))
    return out


def test_three_training_steps_give_the_reference_weights_and_ema() -> None:
    for step, (loss_sum, lr, beta, weights, averaged) in enumerate(train_three_steps(STEP_RECIPE), start=1):
        torch.testing.assert_close(loss_sum, f(f"c8/step{step}/loss_sum"), rtol=1e-5, atol=1e-4)
        assert lr == pytest.approx(float(FIGURES[f"c8/step{step}/lr"]), rel=1e-12)
        assert beta == pytest.approx(float(FIGURES[f"c8/step{step}/ema_beta"]), rel=1e-12)
        assert differing(weights, f"c8/step{step}/net/", rtol=1e-5, atol=1e-6) == [], step
        assert differing(averaged, f"c8/step{step}/ema/", rtol=1e-5, atol=1e-6) == [], step


def sample(config: str, steps: int, clamp: bool = False) -> torch.Tensor:
    net = loaded(config, "weights")
    classes = f(f"{config}/sample/class_labels")

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = net(x, sigma, classes)
        return out.clamp(-1, 1) if clamp else out

    with torch.no_grad():
        return heun_sample(denoise, f(f"{config}/sample/latents"), sigma_schedule(steps, 0.002, 80.0, 7.0))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [5, 18])
def test_the_sampler_makes_the_reference_images(config: str, steps: int) -> None:
    x = sample(config, steps)
    torch.testing.assert_close(x, f(f"{config}/sample/steps{steps}/images_float"), rtol=1e-5, atol=1e-5)
    images = to_uint8((x + 1) / 2)
    assert np.array_equal(images, FIGURES[f"{config}/sample/steps{steps}/images_uint8"])


def test_clamping_the_denoiser_as_before_changes_most_pixels() -> None:
    images = to_uint8((sample("c32", 18, clamp=True) + 1) / 2)
    assert (images != FIGURES["c32/sample/steps18/images_uint8"]).mean() > 0.1


@pytest.mark.parametrize("reverted", [
    replace(STEP_RECIPE, lr_rampup_images=0),                         # no warm-up of the learning rate
    replace(STEP_RECIPE, optimizer="adamw", weight_decay=0.01),       # torch's AdamW default decay
    replace(STEP_RECIPE, grad_clip=1e-3),                             # clipping
    replace(STEP_RECIPE, ema_halflife_images=8),                      # another EMA
])
def test_reverting_one_item_of_the_recipe_fails_the_comparison(reverted: Recipe) -> None:
    _, _, _, weights, averaged = train_three_steps(reverted)[-1]
    assert differing(weights, "c8/step3/net/", 1e-5, 1e-6) + differing(averaged, "c8/step3/ema/", 1e-5, 1e-6)


def test_a_mean_over_pixels_is_not_the_reference_loss() -> None:
    net = loaded("c8", "weights")
    with torch.no_grad():
        loss = edm_loss(net, f("c8/loss/images"), f("c8/loss/labels"), f("c8/loss/rnd_normal"), f("c8/loss/noise"),
                        None, p_mean=-1.2, p_std=1.2)
    reference = f("c8/loss/loss").sum() / len(loss)
    assert torch.isclose(loss.sum() / len(loss), reference, rtol=1e-5)
    assert not torch.isclose(loss.mean(), reference, rtol=1e-2)


def test_the_schedule_is_the_reference_float64_schedule() -> None:
    called = FIGURES["c32/sample/steps5/sigmas_called"]
    sigmas = sigma_schedule(5, 0.002, 80.0, 7.0)
    assert sigmas.dtype == torch.float64
    np.testing.assert_allclose(np.unique(called)[::-1], sigmas[:-1].numpy(), rtol=1e-12)
