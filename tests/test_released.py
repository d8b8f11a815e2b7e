"""Released EDM models (NVlabs' pickle format): read without running their code, refused when they ask for more,
and sampled through the real Snakemake DAG; and `arch: ddpmpp` trained, sampled and judged as a stage.

The pickle is written here the way NVlabs' `torch_utils.persistence` writes one: each network class is a
persistent object carrying its module's source (here a line that would leave a marker file if it ever ran),
class name and `__dict__`; ModuleDicts by class reference; tensors as torch pickles them.
"""

from __future__ import annotations

import collections
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from genrobust.diffusion.ddpmpp import Conv, DDPMpp, DDPMppSettings, Dense, ResBlock
from genrobust.diffusion.edm import EDMPreconditioned
from genrobust.diffusion.model_file import load_model
from genrobust.diffusion.pretrained import import_pretrained
from genrobust.diffusion.released import ALLOWED, AllowListUnpickler, released_network
from genrobust.diffusion.sample import sample_diffusion, to_uint8
from genrobust.errors import UserError
from genrobust.shards import ShardSet

from .conftest import copy_project, run
from .test_edm_golden import META
from .test_faults import SHORT

EDM_NAMES = {DDPMpp: "SongUNet", ResBlock: "UNetBlock", Conv: "Conv2d", Dense: "Linear", nn.GroupNorm: "GroupNorm",
             EDMPreconditioned: "EDMPrecond"}
TINY = DDPMppSettings(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
KWARGS = {"img_resolution": 8, "img_channels": 3, "label_dim": 10, "use_fp16": False, "sigma_data": 0.5,
          "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard",
          "decoder_type": "standard", "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 16,
          "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0, "augment_dim": 0}
EDM = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "rho": 7.0, "P_mean": -1.2, "P_std": 1.2}


class _Persistent(nn.Module):
    """Pickles as NVlabs' persistent objects do: `_reconstruct_persistent_obj(meta)`, meta holding the source."""

    def __init__(self, class_name: str, state: dict, marker: Path) -> None:
        super().__init__()
        self.__dict__["meta"] = {"type": "class", "version": 6, "class_name": class_name, "state": state,
                                 "module_src": f"open({str(marker)!r}, 'w').write('ran')\n"}

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def _record(module: nn.Module, marker: Path, kwargs: dict | None = None) -> nn.Module:
    """Our module as NVlabs' pickle holds theirs; a ModuleDict stays torch's own (pickled by class reference)."""
    children = collections.OrderedDict((name, _record(child, marker)) for name, child in module.named_children()
                                       if not isinstance(child, nn.Dropout))
    if isinstance(module, nn.ModuleDict):
        return nn.ModuleDict(children)
    state = {"training": False, "_parameters": collections.OrderedDict(module.named_parameters(recurse=False)),
             "_buffers": collections.OrderedDict(module.named_buffers(recurse=False)),
             "_non_persistent_buffers_set": set(), "_modules": children, "_init_args": (), "_init_kwargs": kwargs}
    return _Persistent(EDM_NAMES[type(module)], state, marker)


def write_edm_pickle(path: Path, net: EDMPreconditioned, marker: Path, kwargs: dict = KWARGS) -> None:
    """`dict(ema=..., loss_fn=..., augment_pipe=None, dataset_kwargs=...)`, as EDM's training loop saves it."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = lambda meta: None
    persistence._reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    persistence._reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    package = types.ModuleType("torch_utils")
    package.persistence = persistence
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": persistence})
    try:
        loss = _Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}, marker)
        top = {"ema": _record(net, marker, kwargs), "loss_fn": loss, "augment_pipe": None,
               "dataset_kwargs": {"path": "datasets/digits.zip"}}
        path.write_bytes(pickle.dumps(top, protocol=4))
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


def tiny_network(seed: int = 0) -> EDMPreconditioned:
    torch.manual_seed(seed)
    net = EDMPreconditioned(8, 3, 10, 0, TINY, 0.5)
    with torch.no_grad():
        for param in net.parameters():   # away from the near-zero init, so that the weights are told apart
            param.add_(0.02 * torch.randn_like(param))
    return net.eval()


def test_the_test_pickle_uses_the_globals_of_nvlabs_own_and_the_reader_allows_exactly_those(tmp_path: Path) -> None:
    """`tests/golden/edm_008a4e5.json` lists what a snapshot written by NVlabs' training loop asks for."""
    write_edm_pickle(tmp_path / "edm.pkl", tiny_network(), tmp_path / "ran")
    asked = set()

    class Recording(AllowListUnpickler):
        def find_class(self, module: str, name: str):
            asked.add((module, name))
            return super().find_class(module, name)

    with open(tmp_path / "edm.pkl", "rb") as handle:
        Recording(handle, tmp_path / "edm.pkl").load()
    reference = META["pickle"]["globals_find_class"]
    reference = {tuple(pair) for pair in reference}
    assert asked <= reference <= set(ALLOWED)
    assert reference - asked <= {("numpy", "dtype"), ("numpy._core.multiarray", "scalar")}   # np.float64 attributes


def test_a_released_pickle_is_read_without_running_its_code(tmp_path: Path) -> None:
    net, marker = tiny_network(), tmp_path / "ran"
    write_edm_pickle(tmp_path / "edm.pkl", net, marker)
    kwargs, tensors = released_network(tmp_path / "edm.pkl")
    assert not marker.exists()
    assert kwargs == KWARGS
    assert tensors.keys() == net.state_dict().keys()
    assert all(torch.equal(tensors[key], value) for key, value in net.state_dict().items())


def test_an_imported_model_samples_what_the_network_makes(tmp_path: Path) -> None:
    net = tiny_network()
    write_edm_pickle(tmp_path / "edm.pkl", net, tmp_path / "ran")
    settings = {"dataset": {"num_classes": 10, "name": "digits"}, "diffusion": {"edm": EDM}}
    import_pretrained(settings, "edm", tmp_path / "edm.pkl", tmp_path / "model.pt")
    model, meta = load_model(tmp_path / "model.pt", "edm", 10, 4, torch.device("cpu"))
    assert meta["pretrained_sha256"] and meta["steps"] == 0
    latents, labels = torch.randn(2, 3, 8, 8), torch.eye(10)[[3, 7]]
    with torch.no_grad():
        torch.testing.assert_close(model.net(latents, torch.tensor(1.0), labels), net(latents, torch.tensor(1.0), labels))


def test_seed_per_image_layout_reuses_each_latent_seed_once_per_class(tmp_path: Path, digits_settings: dict) -> None:
    """DM-Improves-AT's edm/generate.py: class c, seed s; here image i = (class i mod K, seed i // K)."""
    write_edm_pickle(tmp_path / "edm.pkl", tiny_network(), tmp_path / "ran")
    settings = {"dataset": {"num_classes": 10, "name": "digits"}, "diffusion": {"edm": EDM}}
    import_pretrained(settings, "edm", tmp_path / "edm.pkl", tmp_path / "model.pt")
    digits_settings["sample"].update(num_images=30, shard_size=20, batch_size=7, steps=3, layout="seed_per_image",
                                     clamp_denoised=False, guidance=1.0)
    sample_diffusion(digits_settings, "edm", tmp_path / "model.pt", tmp_path / "gen")
    made = ShardSet.open(tmp_path / "gen")
    images, labels = made.take(np.arange(30))
    model, _ = load_model(tmp_path / "model.pt", "edm", 10, 3, torch.device("cpu"))
    for i in (0, 9, 10, 23, 29):                              # across batches and the shard boundary at 20
        latents = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(i // 10))
        expected = to_uint8(model.sample_from(latents, torch.eye(10)[[i % 10]]))[0]
        assert labels[i] == i % 10 and np.array_equal(images[i], expected)
    assert made.manifest["layout"] == "seed_per_image"


@pytest.mark.parametrize(("payload", "named"), [
    (b"cos\nsystem\n(S'touch MARKER'\ntR.", "os.system"),
    (b"cbuiltins\neval\n(S'1'\ntR.", "builtins.eval"),
    (b"ctorch\nload\n(S'x'\ntR.", "torch.load"),
])
def test_a_pickle_asking_for_anything_else_is_refused_by_name(tmp_path: Path, payload: bytes, named: str) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload.replace(b"MARKER", str(tmp_path / "ran").encode()))
    with pytest.raises(UserError, match=f"refused: the pickle asks for {named}"):
        released_network(path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"model_type": "DhariwalUNet"}, "only SongUNet"),
    ({"encoder_type": "residual"}, "encoder_type = 'residual'"),
    ({"label_dim": 100}, "label_dim = 100, the dataset has 10 classes"),
])
def test_a_released_model_that_is_not_ddpmpp_of_this_dataset_is_refused(tmp_path: Path, change: dict,
                                                                        message: str) -> None:
    write_edm_pickle(tmp_path / "edm.pkl", tiny_network(), tmp_path / "ran", {**KWARGS, **change})
    settings = {"dataset": {"num_classes": 10, "name": "digits"}, "diffusion": {"edm": EDM}}
    with pytest.raises(UserError, match=message):
        import_pretrained(settings, "edm", tmp_path / "edm.pkl", tmp_path / "model.pt")


@pytest.mark.e2e
def test_ddpmpp_trains_samples_and_is_judged_and_a_released_model_replaces_it_through_snakemake(tmp_path: Path) -> None:
    """`arch: ddpmpp` at a small width as a stage (train, sample, quality), then `diffusion.pretrained`."""
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    smoke = params["presets"]["smoke"]
    for section, values in SHORT.items():
        smoke[section].update(values)
    smoke["diffusion"].update(arch="ddpmpp", resolution=8, ddpmpp={**params["diffusion"]["ddpmpp"], "model_channels": 16,
                              "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]},
                              lr_rampup_images=64, ema_halflife_images=64, ema_rampup_ratio=0.05, grad_clip=None,
                              optimizer="adam", weight_decay=0.0)
    smoke["sample"].update(clamp_denoised=False)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    target = "data/digits/generated/edm/quality.json"
    run(["snakemake", "--cores", "2", target], project)
    log = (project / "logs/digits/train_diffusion_edm.log").read_text()
    assert "EDMDiffusion, 189,667 parameters" in log     # NVlabs' c8 (189,523) plus the 9 augmentation inputs
    quality = json.loads((project / target).read_text())
    assert quality["class_agreement"]["overall"] is not None

    write_edm_pickle(tmp_path / "edm.pkl", tiny_network(), tmp_path / "ran")
    run(["snakemake", "--cores", "2", "data/digits/generated/edm/shards/manifest.json",
         "--config", f"diffusion={json.dumps({'pretrained': {'digits': str(tmp_path / 'edm.pkl')}})}"], project)
    assert "nothing trained" in (project / "logs/digits/train_diffusion_edm.log").read_text()
    model = torch.load(project / "models/digits/diffusion/edm/model.pt", weights_only=True)
    assert model["meta"]["pretrained"] == str(tmp_path / "edm.pkl")
    manifest = json.loads((project / "data/digits/generated/edm/shards/manifest.json").read_text())
    assert manifest["count"] == 40 and not (tmp_path / "ran").exists()
