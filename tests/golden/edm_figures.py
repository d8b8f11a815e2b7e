#!/usr/bin/env python
"""Measure golden figures of EDM's DDPM++ (EDMPrecond + SongUNet) from NVlabs' own code.

    python tests/golden/edm_figures.py --edm PATH/TO/edm --out tests/golden/edm_008a4e5.npz

PATH is a checkout of github.com/NVlabs/edm (the figures come from commit 008a4e5); nothing of it
is copied here (its licence is CC BY-NC-SA), it is imported at run time from PATH. The script
writes one npz of tensors (float32 unless the key list below says otherwise, keys with '/'
separators) and a JSON beside it (same stem) with the commit, the torch version, the configs,
the scalar figures and a description of the network-snapshot pickle format. Everything runs on
the CPU in fp32, on one thread, with torch.use_deterministic_algorithms(True).

Two configs of EDMPrecond(img_channels=3, label_dim=10, use_fp16=False, sigma_data=0.5,
model_type='SongUNet') with the DDPM++ settings of train.py --arch=ddpmpp (positional embedding,
standard encoder/decoder, channel_mult_noise 1, resample_filter [1,1]): `c32` (32x32, 16 channels,
channel_mult [1,2,2], 2 blocks, attention at 16, dropout 0.13, augment_dim 9) and `c8` (8x8, 16
channels, channel_mult [1,2], 1 block, attention at 4, dropout 0, augment_dim 0). Per config:

    {c}/init/<key>              state_dict right after torch.manual_seed(0) and construction
    {c}/weights/<key>           init + 0.02 * randn per parameter (torch.Generator seed 1, drawn
                                in state_dict order for parameters only; buffers, i.e. the
                                resample filters, stay as built); loaded for fwd, loss, sample
    {c}/fwd/{x,sigma,class_labels,augment_labels,out,out_uncond_labels_zero}
    {c}/loss/{images,labels,rnd_normal,noise,sigma,loss}   EDMLoss on the eval-mode net
    {c}/sample/{latents,class_labels}
    {c}/sample/steps{5,18}/images_uint8   uint8 NHWC, generate.py's conversion
    {c}/sample/steps{5,18}/images_float   float64, edm_sampler's output
    {c}/sample/steps{5,18}/sigmas_called  float64, the sigma of every net call in order

and for c8 three training steps of NVlabs' own `training_loop.training_loop` (see `train_c8`):

    c8/step{s}/{images,labels,rnd_normal,noise,loss_sum}   what step s drew (float32)
    c8/step{s}/{lr,ema_beta}                               float64 scalars, as the loop set them
    c8/step{s}/net/<param>, c8/step{s}/ema/<param>         parameters after step s; one that is
                                bit-identical to c8/init/<param> is left out (the lr ramp makes step
                                1's lr 0, so all of step 1) unless --keep-duplicates; the JSON counts
                                them under configs.c8.training.omitted_equal_to_init

To run training_loop on a CPU this process (only) gets run-time stand-ins, all undone afterwards:
torch.distributed is a single gloo process; DistributedDataParallel is built without
`device_ids` when the module is on the CPU (torch refuses device_ids=[cpu]);
torch.cuda.reset_peak_memory_stats is a no-op (it needs a GPU); torch.utils.data.Sampler takes
(and ignores) the data_source argument InfiniteSampler passes it, as torch < 2.2 did. Two
observers record the run: EDMLoss.__call__ is wrapped to record its inputs and to replay its
two randn draws from the RNG state saved before the call, and torch_utils.distributed's
update_progress (a no-op in their code, called at every tick) reads the loop's locals (net,
ema, optimizer, ema_beta). Every step is one tick, so each step's network snapshot and
training-state dump are kept too and compared with what the observer read.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import inspect
import io
import json
import os
import pickle
import pickletools
import platform
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

COMMIT = "008a4e5"
BATCH = 4
SIGMAS = [0.002, 0.5, 2.0, 80.0]
FWD_CLASSES = [0, 3, 7, 9]
LOSS_CLASSES = [1, 4, 6, 8]
SAMPLE_CLASSES = [0, 2, 4, 6, 8, 9]
SAMPLE_STEPS = (5, 18)
TRAIN_STEPS = 3
DATASET_LABELS = [3, 9, 0, 7, 1, 5, 2, 8]      # 8 PNGs; the largest label makes label_dim 10
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
              decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
CONFIGS: dict[str, dict[str, Any]] = {
    "c32": dict(img_resolution=32, model_channels=16, channel_mult=[1, 2, 2], num_blocks=2,
                attn_resolutions=[16], dropout=0.13, augment_dim=9),
    "c8": dict(img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1,
               attn_resolutions=[4], dropout=0.0, augment_dim=0),
}
FULL = dict(img_resolution=32, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
            attn_resolutions=[16], dropout=0.13)
TRAIN = dict(batch_size=4, batch_gpu=4, lr=1e-3, betas=[0.9, 0.999], eps=1e-8, lr_rampup_kimg=0.006,
             ema_halflife_kimg=0.004, ema_rampup_ratio=None, total_kimg=0.012, kimg_per_tick=0.001,
             snapshot_ticks=1, state_dump_ticks=1, seed=0, loss_scaling=1)


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


def net_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """EDMPrecond's keyword arguments for a config (interface and DDPM++ settings included)."""
    return dict(img_resolution=cfg["img_resolution"], img_channels=3, label_dim=10, use_fp16=False,
                sigma_data=0.5, **DDPMPP, **{k: v for k, v in cfg.items() if k != "img_resolution"})


def build(ref: types.SimpleNamespace, cfg: dict[str, Any]) -> torch.nn.Module:
    """EDMPrecond built right after torch.manual_seed(0)."""
    torch.manual_seed(0)
    return ref.networks.EDMPrecond(**net_kwargs(cfg))


def one_hot(classes: list[int]) -> torch.Tensor:
    return torch.eye(10)[classes]


def arrays(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": v.detach().cpu().numpy().copy() for k, v in tensors.items()}


def jsonable(value: Any) -> Any:
    """Plain JSON values of init kwargs and similar small structures (numpy scalars included)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)                      # 'inf': strict JSON has no Infinity
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


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


def forward_figures(ref: types.SimpleNamespace, c: str, cfg: dict[str, Any], net: torch.nn.Module) -> dict[str, np.ndarray]:
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


class RngReplay:
    """Record what an EDMLoss call drew: restore the RNG state saved before it and draw the same again."""

    def __init__(self) -> None:
        self.before = torch.get_rng_state()

    def replay(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        after = torch.get_rng_state()
        torch.set_rng_state(self.before)
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        noise = torch.randn_like(images)
        exact = torch.equal(torch.get_rng_state(), after)      # the loss drew exactly these two, nothing else
        torch.set_rng_state(after)
        return rnd_normal, noise, exact


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


def write_dataset(folder: Path, resolution: int) -> None:
    """Eight random RGB PNGs and a dataset.json of labels, the layout ImageFolderDataset reads."""
    import PIL.Image
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    names = []
    for i, label in enumerate(DATASET_LABELS):
        name = f"img{i:05d}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8), "RGB").save(folder / name)
        names.append([name, label])
    (folder / "dataset.json").write_text(json.dumps({"labels": names}))


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set obj.name to value for the duration; restore (or delete, if it was inherited) afterwards."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def single_gloo_process() -> Iterator[None]:
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    torch.distributed.init_process_group("gloo", init_method="env://", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def named_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def train_c8(ref: types.SimpleNamespace, init_net: torch.nn.Module, workdir: Path,
             keep_duplicates: bool = False) -> tuple[dict, dict]:
    """Three steps of NVlabs' training_loop.training_loop on a folder of 8x8 PNGs, starting from c8/init.

    The loop builds its own net from its own seed; `resume_pkl` (a pickle of dict(ema=init_net))
    makes it copy c8/init into net and EMA, the way train.py --transfer does (which also sets
    ema_rampup_ratio None).
    """
    data_dir, run_dir = workdir / "dataset", workdir / "run"
    write_dataset(data_dir, CONFIGS["c8"]["img_resolution"])
    run_dir.mkdir()
    init_pkl = workdir / "init-c8.pkl"
    with open(init_pkl, "wb") as f:
        pickle.dump(dict(ema=init_net), f)

    cfg = CONFIGS["c8"]
    network_kwargs = ref.dnnlib.EasyDict(class_name="training.networks.EDMPrecond", use_fp16=False, sigma_data=0.5, **DDPMPP,
                                         **{k: v for k, v in cfg.items() if k != "img_resolution"})
    kwargs = dict(
        run_dir=str(run_dir),
        dataset_kwargs=ref.dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=str(data_dir),
                                           use_labels=True, xflip=False, cache=False),
        data_loader_kwargs=ref.dnnlib.EasyDict(pin_memory=False, num_workers=0),
        network_kwargs=network_kwargs,
        loss_kwargs=ref.dnnlib.EasyDict(class_name="training.loss.EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5),
        optimizer_kwargs=ref.dnnlib.EasyDict(class_name="torch.optim.Adam", lr=TRAIN["lr"], betas=TRAIN["betas"], eps=TRAIN["eps"]),
        augment_kwargs=None, seed=TRAIN["seed"], batch_size=TRAIN["batch_size"], batch_gpu=TRAIN["batch_gpu"],
        total_kimg=TRAIN["total_kimg"], ema_halflife_kimg=TRAIN["ema_halflife_kimg"], ema_rampup_ratio=TRAIN["ema_rampup_ratio"],
        lr_rampup_kimg=TRAIN["lr_rampup_kimg"], loss_scaling=TRAIN["loss_scaling"], kimg_per_tick=TRAIN["kimg_per_tick"],
        snapshot_ticks=TRAIN["snapshot_ticks"], state_dump_ticks=TRAIN["state_dump_ticks"], resume_pkl=str(init_pkl),
        cudnn_benchmark=False, device=torch.device("cpu"))

    calls: list[dict[str, Any]] = []
    ticks: list[dict[str, Any]] = []
    edm_loss = ref.loss.EDMLoss
    original_call = edm_loss.__mro__[1].__call__          # the undecorated class's __call__

    def recording_call(self, net, images, labels=None, augment_pipe=None):
        rng = RngReplay()
        loss = original_call(self, net, images, labels=labels, augment_pipe=augment_pipe)
        rnd_normal, noise, exact = rng.replay(images)
        calls.append(dict(images=images.detach().clone(), labels=labels.detach().clone(), rnd_normal=rnd_normal,
                          noise=noise, loss_sum=loss.detach().sum(), exact=exact, training=net.training))
        return loss

    def observe(cur: int, total: float) -> None:
        loop = sys._getframe(1).f_locals                 # training_loop's locals at the end of a tick
        entry = dict(cur_nimg=loop["cur_nimg"], net=named_params(loop["net"]), ema=named_params(loop["ema"]))
        if "ema_beta" in loop:
            entry.update(lr=loop["optimizer"].param_groups[0]["lr"], ema_beta=loop["ema_beta"])
        for pattern, tag in (("network-snapshot-000000.pkl", "snapshot"), ("training-state-000000.pt", "state")):
            if (run_dir / pattern).exists():
                target = run_dir / f"step{len(ticks)}-{pattern}"
                os.replace(run_dir / pattern, target)
                entry[tag] = target
        ticks.append(entry)

    class CpuDDP(torch.nn.parallel.DistributedDataParallel):
        """torch refuses device_ids=[cpu]; a CPU module takes device_ids=None."""

        def __init__(self, module, device_ids=None, **kw):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids=device_ids, **kw)

    out = io.StringIO()
    with single_gloo_process(), patched(edm_loss, "__call__", recording_call), \
            patched(ref.distributed, "update_progress", observe), \
            patched(torch.nn.parallel, "DistributedDataParallel", CpuDDP), \
            patched(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None), \
            patched(torch.utils.data.Sampler, "__init__", lambda self, data_source=None: None), \
            contextlib.redirect_stdout(out):
        ref.training_loop.training_loop(**kwargs)

    assert len(calls) == TRAIN_STEPS and len(ticks) == TRAIN_STEPS + 1, (len(calls), len(ticks))
    init = named_params(init_net)
    figures: dict[str, np.ndarray] = {}
    checks: dict[str, Any] = {"start_equals_init": all(torch.equal(ticks[0][w][k], init[k]) for w in ("net", "ema") for k in init),
                              "loss_draws_exact": [c["exact"] for c in calls], "net_training_mode": [c["training"] for c in calls]}
    steps = []
    omitted: dict[str, int] = {}
    for s in range(1, TRAIN_STEPS + 1):
        call, tick = calls[s - 1], ticks[s]
        figures.update(arrays(f"c8/step{s}", {k: call[k] for k in ("images", "labels", "rnd_normal", "noise", "loss_sum")}))
        figures[f"c8/step{s}/lr"] = np.array(tick["lr"], dtype=np.float64)
        figures[f"c8/step{s}/ema_beta"] = np.array(tick["ema_beta"], dtype=np.float64)
        for which in ("net", "ema"):
            same = [k for k in init if torch.equal(tick[which][k], init[k])]
            if same and not keep_duplicates:          # lr 0 at step 1: the whole step leaves net and EMA at init
                omitted[f"c8/step{s}/{which}"] = len(same)
            kept = {k: v for k, v in tick[which].items() if keep_duplicates or k not in same}
            figures.update(arrays(f"c8/step{s}/{which}", kept))
        check = {}
        if "snapshot" in tick:
            with open(tick["snapshot"], "rb") as f:
                snap = pickle.load(f)["ema"]
            check["snapshot_ema_equal"] = all(torch.equal(v, tick["ema"][k]) for k, v in named_params(snap).items())
        if "state" in tick:
            state = torch.load(tick["state"], map_location="cpu", weights_only=False)
            check["training_state_net_equal"] = all(torch.equal(v, tick["net"][k]) for k, v in named_params(state["net"]).items())
        steps.append(dict(step=s, cur_nimg_after=tick["cur_nimg"], lr=tick["lr"], ema_beta=tick["ema_beta"],
                          loss_sum=float(call["loss_sum"]), labels=call["labels"].argmax(1).tolist(),
                          net_changed=any(not torch.equal(tick["net"][k], ticks[s - 1]["net"][k]) for k in init), **check))
    checks["steps"] = steps
    checks["omitted_equal_to_init"] = omitted
    checks["last_snapshot"] = str(ticks[-1].get("snapshot"))
    checks["stdout_lines"] = len(out.getvalue().splitlines())
    return figures, checks


def pickle_globals(data: bytes) -> tuple[int, list[list[str]]]:
    """Protocol and every (module, name) a pickle's GLOBAL/STACK_GLOBAL opcodes reference, in first-use order."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []          # what the last opcodes pushed (strings, memo gets), for STACK_GLOBAL
    found: list[list[str]] = []
    protocol = -1
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "PROTO":
            protocol = arg
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif op.name in ("FRAME",):
            pass
        elif op.name == "GLOBAL":
            pair = arg.split(" ", 1)
            pushed.append(None)
            if pair not in found:
                found.append(pair)
        elif op.name == "STACK_GLOBAL":
            pair = [pushed[-2], pushed[-1]]
            pushed.append(None)
            if pair not in found:
                found.append(pair)
        else:
            pushed.append(None)
    return protocol, found


def brief(value: Any) -> Any:
    """A short description of one value inside a persistent object's state."""
    if isinstance(value, torch.Tensor):
        return f"{type(value).__name__}{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    if isinstance(value, np.generic):
        return {"numpy": type(value).__name__, "value": value.item()}
    return jsonable(value)


def describe_value(value: Any) -> Any:
    """Type and contents (tensors and modules by kind and shape) of one persistent object's state entry."""
    if isinstance(value, (dict, set, frozenset)):
        items = {str(k): brief(v) for k, v in value.items()} if isinstance(value, dict) else sorted(map(str, value))
        return {"type": type(value).__module__ + "." + type(value).__name__, "items": items}
    if isinstance(value, (str, int, float, bool, list, tuple)) or value is None:
        return {"type": type(value).__name__, "value": jsonable(value)}
    if isinstance(value, np.generic):
        return {"type": "numpy." + type(value).__name__, "value": value.item()}
    return {"type": type(value).__module__ + "." + type(value).__name__}


def pickle_figures(ref: types.SimpleNamespace, snapshot: Path) -> dict[str, Any]:
    """The structure of training_loop's network-snapshot pickle: globals, persistent-object metadata and state."""
    data = snapshot.read_bytes()
    protocol, globals_ = pickle_globals(data)
    find_class: list[list[str]] = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            if [module, name] not in find_class:
                find_class.append([module, name])
            return super().find_class(module, name)

    sources = {inspect.getsource(m): m.__name__ for m in (ref.networks, ref.loss)}
    metas: list[dict[str, Any]] = []

    def hook(meta):
        metas.append(dict(meta_keys=list(meta.keys()), type=meta.type, version=meta.version, class_name=meta.class_name,
                          module_src_of=sources.get(meta.module_src, "unknown source"),
                          module_src_sha256=hashlib.sha256(meta.module_src.encode()).hexdigest(),
                          module_src_chars=len(meta.module_src),
                          state={k: describe_value(v) for k, v in meta.state.items()}))
        return meta

    ref.persistence._import_hooks.append(hook)
    try:
        loaded = Recorder(io.BytesIO(data)).load()
    finally:
        ref.persistence._import_hooks.remove(hook)

    by_class: dict[str, dict[str, Any]] = {}
    variants: dict[str, list[list[str]]] = {}
    for m in metas:
        by_class.setdefault(m["class_name"], m)        # the first instance of each class, in full
        keys = list(m["state"].keys())
        if keys not in variants.setdefault(m["class_name"], []):
            variants[m["class_name"]].append(keys)
    counts: dict[str, int] = {}
    for m in metas:
        counts[m["class_name"]] = counts.get(m["class_name"], 0) + 1
    ema = loaded["ema"]
    return {
        "file": str(snapshot), "bytes": len(data), "protocol": protocol, "writer": "training_loop.training_loop's own "
        "snapshot (pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...), f), default protocol)",
        "top_level": {k: type(v).__module__ + "." + type(v).__name__ for k, v in loaded.items()},
        "dataset_kwargs": jsonable({k: v for k, v in loaded["dataset_kwargs"].items() if k != "path"}),
        "globals_genops": globals_, "globals_find_class": find_class,
        "persistent_objects_per_class": counts,
        "persistent_meta_by_class": by_class,
        "state_key_variants_by_class": variants,
        "unpickled_ema_type_module": type(ema).__module__,
        "unpickled_ema_init_kwargs": jsonable(dict(ema.init_kwargs)), "unpickled_ema_init_args": jsonable(list(ema.init_args)),
        "unpickled_songunet_init_kwargs": jsonable(dict(ema.model.init_kwargs)),
        "unpickled_loss_fn_init_kwargs": jsonable(dict(loaded["loss_fn"].init_kwargs)),
        "note": "state is the object's __dict__ (torch.nn.Module.__getstate__ / object.__reduce__), handed to "
                "_reconstruct_persistent_obj inside a dict(type, version, module_src, class_name, state); submodules "
                "are themselves persistent objects under state['_modules'].",
    }


def full_size_counts(ref: types.SimpleNamespace) -> dict[str, Any]:
    """Parameter counts of the CIFAR-10 conditional DDPM++ on the meta device, with and without augment_dim 9."""
    counts = {}
    for augment_dim in (9, 0):
        kwargs = dict(img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, sigma_data=0.5, **DDPMPP,
                      **{k: v for k, v in FULL.items() if k != "img_resolution"}, augment_dim=augment_dim)
        with torch.device("meta"):
            net = ref.networks.EDMPrecond(**kwargs)
        counts[f"augment_dim_{augment_dim}"] = sum(p.numel() for p in net.parameters())
    counts["config"] = jsonable(dict(FULL, label_dim=10, **DDPMPP))
    counts["built_on"] = "meta"
    return counts


def commit_of(edm: str) -> str:
    try:
        return subprocess.run(["git", "-C", edm, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(edm: str, workdir: Path, keep_duplicates: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ref = load(edm)
    figures: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {
        "commit": commit_of(edm), "commit_expected": COMMIT, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "batch": BATCH, "fwd": {"sigma": SIGMAS, "classes": FWD_CLASSES}, "loss_classes": LOSS_CLASSES,
        "sample": {"classes": SAMPLE_CLASSES, "num_steps": list(SAMPLE_STEPS), "S_churn": 0, "sigma_min": 0.002,
                   "sigma_max": 80, "rho": 7},
        "seeds": {"init": "torch.manual_seed(0) then EDMPrecond(...)", "weights": "torch.Generator seed 1, randn per parameter",
                  "fwd": "Generator seed 2: y=rand*2-1, n=randn, x=y+sigma*n, augment_labels=randn*0.5",
                  "loss": "Generator seed 3: images=rand*2-1; torch.manual_seed(4) before EDMLoss",
                  "sample": "Generator seed 5: latents=randn; torch.manual_seed(6) before edm_sampler",
                  "dataset": "numpy default_rng(7) uint8 PNGs"},
        "configs": {}, "dtypes": {"default": "float32", "uint8": "*/images_uint8",
                                  "float64": "*/images_float, */sigmas_called, c8/step*/lr, c8/step*/ema_beta"},
    }
    for c, cfg in CONFIGS.items():
        net = build(ref, cfg)
        entry: dict[str, Any] = {"edmprecond_kwargs": jsonable(net_kwargs(cfg))}
        entry["param_names"] = [k for k, _ in net.named_parameters()]
        entry["param_count"] = sum(p.numel() for p in net.parameters())
        entry["state_dict_keys"] = list(net.state_dict().keys())
        entry["buffer_names"] = [k for k, _ in net.named_buffers()]
        entry["init_kwargs"] = {"EDMPrecond": jsonable(dict(net.init_kwargs)), "EDMPrecond_init_args": jsonable(list(net.init_args)),
                                "SongUNet": jsonable(dict(net.model.init_kwargs))}
        entry["init_recipe"] = verify_init_recipe(net)
        init_state = {k: v.clone() for k, v in net.state_dict().items()}
        figures.update(arrays(f"{c}/init", init_state))
        init_net = copy.deepcopy(net)
        weights = perturb(net)
        figures.update(arrays(f"{c}/weights", weights))
        net.load_state_dict(weights)
        net.eval()
        figures.update(forward_figures(ref, c, cfg, net))
        entry["fwd_out_sum"] = float(figures[f"{c}/fwd/out"].astype(np.float64).sum())
        loss_arrays, entry["loss"] = loss_figures(ref, c, cfg, net)
        figures.update(loss_arrays)
        sample_arrays, entry["sample"] = sample_figures(ref, c, cfg, net)
        figures.update(sample_arrays)
        if c == "c8":
            train_arrays, entry["training"] = train_c8(ref, init_net, workdir, keep_duplicates)
            entry["training"]["method"] = ("NVlabs training.training_loop.training_loop itself, 3 steps (see module docstring "
                                           "for the CPU stand-ins and observers)")
            entry["training"]["kwargs"] = jsonable(TRAIN)
            figures.update(train_arrays)
            info["pickle"] = pickle_figures(ref, Path(entry["training"]["last_snapshot"]))
        info["configs"][c] = entry
    info["full_size"] = full_size_counts(ref)
    info["full_size"]["55735299_is"] = [k for k, v in info["full_size"].items() if v == 55735299]
    return figures, info


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm", default=os.environ.get("EDM"), required=os.environ.get("EDM") is None,
                        help="a checkout of NVlabs/edm (commit 008a4e5)")
    parser.add_argument("--out", required=True, help="the npz to write; the JSON goes beside it with the same stem")
    parser.add_argument("--scratch", default=None,
                        help="where the run's dataset, pickles and snapshots go (default: a new folder beside --edm)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="also write c8/step*/{net,ema}/<param> that are bit-identical to c8/init (1.4 MB more)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edm_figures_", dir=args.scratch or str(Path(args.edm).resolve().parent)))
    figures, info = run(args.edm, workdir, args.keep_duplicates)
    info["workdir"] = str(workdir)
    out = Path(args.out)
    np.savez_compressed(out, **figures)
    info["npz_keys"] = len(figures)
    info["npz_bytes"] = out.stat().st_size
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{out}: {len(figures)} arrays, {out.stat().st_size} bytes; {out.with_suffix('.json')}", file=sys.stderr)
