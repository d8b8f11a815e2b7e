"""What training_loop's network-snapshot pickle holds, so the project can read NVlabs' released pickles without their code.

Their pickles store persistent objects (torch_utils.persistence): each class by its module's
source text and each object by its __dict__. The facts below are read from a snapshot their own
loop wrote: the globals the pickle names (from its opcodes, and from what the unpickler asks
for), and each persistent object's metadata as persistence's import hook sees it.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import pickle
import pickletools
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .convert import jsonable


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
            pass                    # framing pushes nothing: it must not hide the strings a STACK_GLOBAL takes
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
        def find_class(self, module: str, name: str) -> Any:
            if [module, name] not in find_class:
                find_class.append([module, name])
            return super().find_class(module, name)

    sources = {inspect.getsource(m): m.__name__ for m in (ref.networks, ref.loss)}
    metas: list[dict[str, Any]] = []

    def hook(meta: Any) -> Any:
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
