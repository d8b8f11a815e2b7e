"""NVlabs' released EDM models (`edm-cifar10-32x32-cond-vp.pkl`, ...) read without running any code from them.

Those files are Python pickles of whole objects: their classes carry their module's source code, which a
plain `pickle.load` would execute. Here an allow-listed unpickler rebuilds only tensors and the few container
types the format uses; every persistent object or module becomes an inert `Record` (its class name and saved
state), and anything else stops the load with the module and name it asked for. The EMA network's
parameters and buffers are then collected by their dotted names, which are the keys our `EDMPreconditioned`
uses, and its construction arguments are checked against DDPM++ before anything is loaded.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import UserError

PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
# The DDPM++ settings NVlabs' train.py uses for --arch=ddpmpp: anything else is another network.
DDPMPP_FIXED = {"embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
                "channel_mult_noise": 1, "resample_filter": [1, 1], "channel_mult_emb": 4}
# EDMPrecond's preconditioning is ours; NVlabs' other preconditionings (VP, VE, iDDPM) are not.
PRECONDITIONING = "EDMPrecond"


class Record:
    """A pickled object rebuilt as data only: the class it named and the state it saved."""

    def __init__(self, class_name: str, state: Any = None) -> None:
        self.class_name, self.state = class_name, state

    def __setstate__(self, state: Any) -> None:
        self.state = state


class ModuleDict(Record):
    """torch's ModuleDict, pickled by class reference (NEWOBJ, then its __dict__ as state)."""

    class_name = "ModuleDict"
    state = None


def _numpy_dtype(name: str, align: bool = False, copy: bool = False) -> np.dtype:
    """A numeric numpy dtype only (np.float64 hyper-parameters such as `skip_scale`): never an object dtype."""
    dtype = np.dtype(name)
    if dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"numpy dtype {name!r} is not numeric")
    return dtype


def _numpy_scalar(dtype: np.dtype, data: bytes) -> Any:
    """A numpy scalar from its raw bytes, for the numeric dtypes `_numpy_dtype` lets through."""
    return np.frombuffer(data, dtype=dtype)[0]


def _persistent(meta: Mapping[str, Any]) -> Record:
    """A persistent class's instance: its name and state; its `module_src` is never run."""
    return Record(str(meta.get("class_name")), meta.get("state"))


def _storage_from_bytes(data: bytes) -> Any:
    """A tensor storage, pickled by torch as a nested torch.save file: loaded with weights_only, which runs no code."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


# What NVlabs' snapshots ask for (tests/golden/edm_008a4e5.json lists it), numpy 1's spelling included.
ALLOWED: dict[tuple[str, str], Any] = {
    PERSISTENT: _persistent,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,    # numpy 1 (the released files)
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,   # numpy 2
}


class AllowListUnpickler(pickle.Unpickler):
    """Rebuilds only what `ALLOWED` names; any other global is refused by its module and name."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        raise UserError(f"{self.path}: refused: the pickle asks for {module}.{name}, which is not part of the "
                        "EDM model format (only tensors, containers and NVlabs' persistent objects are read)")

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self.path}: refused: the pickle uses persistent id {pid!r}, which EDM's format does not")


def read_pickle(path: Path) -> Any:
    """The pickle's top-level object, rebuilt safely."""
    if not path.is_file():
        raise UserError(f"{path}: file not found (diffusion.pretrained: a released EDM model, e.g. "
                        "edm-cifar10-32x32-cond-vp.pkl)")
    with open(path, "rb") as handle:
        try:
            return AllowListUnpickler(handle, path).load()
        except UserError:
            raise
        except Exception as exc:  # a truncated or foreign file: any unpickling error, named
            raise UserError(f"{path}: not a readable EDM model pickle ({type(exc).__name__}: {exc})") from exc


def _module_state(record: Record, path: Path) -> dict[str, Any]:
    if not isinstance(record, Record) or not isinstance(record.state, dict) or "_modules" not in record.state:
        raise UserError(f"{path}: expected a torch module in the pickle, found {type(record).__name__}")
    return record.state


def tensors(record: Record, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer under a module record, by dotted name (as `state_dict` names them)."""
    state = _module_state(record, path)
    out = {}
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is not None:
                out[prefix + name] = torch.as_tensor(value).detach().clone()
    for name, child in state["_modules"].items():
        if child is not None:
            out.update(tensors(child, path, f"{prefix}{name}."))
    return out


def released_network(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(construction kwargs of the EMA network, its tensors) from a released EDM pickle, checked to be DDPM++."""
    top = read_pickle(path)
    if not isinstance(top, dict) or "ema" not in top:
        raise UserError(f"{path}: not an EDM model pickle (no 'ema' entry at the top level)")
    ema = top["ema"]
    if not isinstance(ema, Record) or ema.class_name != PRECONDITIONING:
        name = ema.class_name if isinstance(ema, Record) else type(ema).__name__
        raise UserError(f"{path}: the network is preconditioned by {name}; only {PRECONDITIONING} is supported")
    kwargs = dict(_module_state(ema, path).get("_init_kwargs") or {})
    if kwargs.get("model_type") != "SongUNet":
        raise UserError(f"{path}: model_type = {kwargs.get('model_type')!r}; only SongUNet (DDPM++) is supported")
    for key, value in DDPMPP_FIXED.items():
        if key in kwargs and kwargs[key] != value:
            raise UserError(f"{path}: {key} = {kwargs[key]!r}; DDPM++ has {value!r}")
    return kwargs, tensors(ema, path)
