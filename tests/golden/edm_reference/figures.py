"""Figures of one built EDMPrecond: its init recipe, perturbed weights, forward pass, EDMLoss and edm_sampler.

The weights are perturbed away from init so that a forward figure exercises every parameter
(zero-initialised output layers would otherwise hide mistakes); each figure draws its inputs from
its own seeded generator, so one figure's draws never shift another's.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch

from .configs import BATCH, FWD_CLASSES, LOSS_CLASSES, SAMPLE_CLASSES, SAMPLE_STEPS, SIGMAS
from .convert import arrays, one_hot
from .rng_replay import RngReplay


def perturb(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """init + 0.02 * randn for every parameter, drawn in state_dict order from a seed-1 generator."""
    params = {name for name, _ in net.named_parameters()}
    g = torch.Generator().manual_seed(1)
    out = {}
    for key, value in net.state_dict().items():
        out[key] = value + 0.02 * torch.randn(value.shape, generator=g) if key in params else value.clone()
    return out


def verify_init_recipe(net: torch.nn.Module) -> dict[str, Any]:
    """Check, bit for bit, the seeding recipe the report gives for SongUNet's init.

    From torch.manual_seed(0), every Linear/Conv2d weight and then its bias (zero-scaled biases
    included) draws torch.rand(shape) in named_parameters order; the value is
    (rand * 2 - 1) * sqrt(6 / (fan_in + fan_out)), then * init_weight; GroupNorm draws nothing.
    """
    torch.manual_seed(0)
    modules = dict(net.named_modules())
    mismatched = []
    for name, param in net.named_parameters():
        owner_name, kind = name.rsplit(".", 1)
        owner = modules[owner_name]
        if type(owner).__name__ == "GroupNorm":
            expected = torch.ones_like(param) if kind == "weight" else torch.zeros_like(param)
        else:
            w = owner.weight
            fan_in, fan_out = (w.shape[1], w.shape[0]) if w.ndim == 2 else (w.shape[1] * w.shape[2] * w.shape[3],
                                                                               w.shape[0] * w.shape[2] * w.shape[3])
            scale = 0.0 if kind == "bias" else (1e-5 if owner_name.endswith(("conv1", "proj", "aux_conv"))
                                                else float(np.sqrt(0.2)) if owner_name.endswith("qkv") else 1.0)
            expected = np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*param.shape) * 2 - 1) * scale
        if not torch.equal(expected, param.detach()):
            mismatched.append(name)
    return {"verified_bit_exact": not mismatched, "mismatched": mismatched}


def forward_figures(c: str, cfg: dict[str, Any], net: torch.nn.Module) -> dict[str, np.ndarray]:
    """net(x, sigma, labels[, augment_labels]) in eval mode on noisy images at four noise levels."""
    r = cfg["img_resolution"]
    g = torch.Generator().manual_seed(2)
    y = torch.rand(BATCH, 3, r, r, generator=g) * 2 - 1
    n = torch.randn(BATCH, 3, r, r, generator=g)
    sigma = torch.tensor(SIGMAS)
    x = y + sigma.reshape(-1, 1, 1, 1) * n
    labels = one_hot(FWD_CLASSES)
    extra = {}
    if cfg["augment_dim"]:
        extra["augment_labels"] = torch.randn(BATCH, cfg["augment_dim"], generator=g) * 0.5
    with torch.no_grad():
        out = net(x, sigma, labels, **extra)
        out_zero = net(x, sigma, torch.zeros_like(labels), **extra)
    return arrays(f"{c}/fwd", dict(x=x, sigma=sigma, class_labels=labels, **extra, out=out, out_uncond_labels_zero=out_zero))


def loss_figures(ref: types.SimpleNamespace, c: str, cfg: dict[str, Any], net: torch.nn.Module) -> tuple[dict, dict]:
    """EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5) on the eval-mode net, augment_pipe=None."""
    r = cfg["img_resolution"]
    g = torch.Generator().manual_seed(3)
    images = torch.rand(BATCH, 3, r, r, generator=g) * 2 - 1
    labels = one_hot(LOSS_CLASSES)
    loss_fn = ref.loss.EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    seen: list[torch.Tensor] = []
    hook = net.register_forward_pre_hook(lambda m, a: seen.append(a[1].detach().clone()))
    torch.manual_seed(4)
    rng = RngReplay()
    with torch.no_grad():
        loss = loss_fn(net=net, images=images, labels=labels, augment_pipe=None)
    hook.remove()
    rnd_normal, noise, exact = rng.replay(images)
    figures = arrays(f"{c}/loss", dict(images=images, labels=labels, rnd_normal=rnd_normal, noise=noise,
                                       sigma=seen[0], loss=loss))
    return figures, {"torch_manual_seed_before_call": 4, "draws_exactly_rnd_normal_then_noise": exact,
                     "loss_sum": float(loss.sum()), "loss_mean": float(loss.mean())}


def sample_figures(ref: types.SimpleNamespace, c: str, cfg: dict[str, Any], net: torch.nn.Module) -> tuple[dict, dict]:
    """generate.edm_sampler (S_churn 0, sigma 0.002..80, rho 7) for 5 and 18 steps, generate.py's uint8 conversion."""
    r = cfg["img_resolution"]
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(len(SAMPLE_CLASSES), 3, r, r, generator=g)
    labels = one_hot(SAMPLE_CLASSES)
    figures = arrays(f"{c}/sample", dict(latents=latents, class_labels=labels))
    scalars = {}
    for steps in SAMPLE_STEPS:
        sigmas: list[float] = []
        hook = net.register_forward_pre_hook(lambda m, a: sigmas.append(float(a[1])))
        torch.manual_seed(6)           # S_churn 0 still calls randn_like once per step (times zero)
        with torch.no_grad():
            images = ref.generate.edm_sampler(net, latents, labels, num_steps=steps)
        hook.remove()
        images_np = (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        figures[f"{c}/sample/steps{steps}/images_uint8"] = images_np
        figures[f"{c}/sample/steps{steps}/images_float"] = images.numpy().copy()
        figures[f"{c}/sample/steps{steps}/sigmas_called"] = np.array(sigmas, dtype=np.float64)
        scalars[f"steps{steps}"] = {"net_calls": len(sigmas), "images_float_dtype": str(images.dtype),
                                    "images_float_sum": float(images.sum()),
                                    "images_uint8_sum": int(images_np.astype(np.int64).sum())}
    return figures, scalars
