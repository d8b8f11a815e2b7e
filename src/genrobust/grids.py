"""Experiment grids: the papers' ablation tables as sets of cells that share their upstream artifacts.

A grid names a dataset and lists values for some axes (threat, generator, num_images,
activation, seed, sigma); its cells are the product. A seed axis repeats each cell with other
training seeds (the generated data stays the same), so the report can give a mean and an interval.
A sigma axis makes the grid certified: its cells train a randomized-smoothing base classifier
(smooth_train) and certify it (certify) instead of adv_train and AutoAttack; their names carry
`smooth<sigma>` where the others carry the threat (0.25 spelled 0p25, names have no dots). Every cell trains its own model, but all
cells of a dataset read the same generated shards (the first `num_images` kept images of
the dataset's one set per generator), so a grid over data volume costs one diffusion model
and one sampling run, not one per cell. A cell without generated data (generator `none` or
num_images 0) is the same experiment whatever the other generator says, so it is one cell.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import io
from .errors import UserError

AXES = ("threat", "generator", "num_images", "activation", "seed", "sigma")


@dataclass(frozen=True)
class Cell:
    grid: str
    dataset: str
    threat: str
    generator: str
    num_images: int
    activation: str
    seed: int | None = None   # None: params' seed (a grid without a seed axis; then not in the name)
    sigma: float | None = None   # a certified cell's noise level; None: adversarial training and AutoAttack

    @property
    def name(self) -> str:
        kind = self.threat if self.sigma is None else "smooth" + f"{self.sigma:g}".replace(".", "p")
        base = f"{self.dataset}_{kind}_{self.generator}_{self.num_images}_{self.activation}"
        return base if self.seed is None else f"{base}_seed{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), name=self.name)


def _defaults(params: Mapping[str, Any], dataset: str, certified: bool) -> dict[str, list]:
    """An axis a grid leaves out takes the value the main pipeline would use."""
    from .config import resolve
    settings = resolve(params, dataset)
    trainer = "smooth_train" if certified else "adv_train"
    return {"threat": [params["pipeline"]["threats"][0]], "generator": [params["generator"]],
            "num_images": [settings["sample"]["num_images"]],
            "activation": [settings[trainer]["model"]["activation"]], "seed": [None], "sigma": [None]}


def cells(params: Mapping[str, Any], grid: str) -> list[Cell]:
    """The grid's distinct cells, in the order its axes list them."""
    if grid not in params["grids"]:
        raise UserError(f"params.yaml: no grid {grid!r} under grids (declared: {', '.join(sorted(params['grids']))})")
    spec = params["grids"][grid]
    dataset = spec["dataset"]
    if dataset not in params["datasets"]:
        raise UserError(f"params.yaml: grids.{grid}.dataset = {dataset!r} is not declared under datasets")
    axes = {**_defaults(params, dataset, "sigma" in spec), **{axis: spec[axis] for axis in AXES if axis in spec}}
    if "sigma" in spec and "threat" in spec:
        raise UserError(f"params.yaml: grids.{grid} has both a threat and a sigma axis; a certified grid "
                        "(sigma) has no threat, an adversarial one no sigma")
    found: dict[str, Cell] = {}
    for threat, generator, num_images, activation, seed, sigma in itertools.product(*(axes[a] for a in AXES)):
        if generator == "none" or num_images == 0:
            generator, num_images = "none", 0
        cell = Cell(grid, dataset, threat, generator, int(num_images), activation, seed,
                    None if sigma is None else float(sigma))
        found.setdefault(cell.name, cell)
    return list(found.values())


def all_cells(params: Mapping[str, Any]) -> dict[tuple[str, str], Cell]:
    """Every cell of every grid, by (grid, cell name): how the pipelines look a cell up from its path."""
    return {(grid, cell.name): cell for grid in params["grids"] for cell in cells(params, grid)}


def generated_paths(cell: Cell) -> tuple[str, str] | None:
    """The shard directory and labels file a cell reads, or None for a cell without generated data."""
    if cell.generator == "none":
        return None
    base = f"data/{cell.dataset}/generated/{cell.generator}"
    return f"{base}/shards", f"{base}/labels.npz"


def cell_args(cell: Cell) -> str:
    """The cell's part of the adv_train (or, certified, smooth_train) command line: one function, so Snakemake
    and DVC run the same command."""
    if cell.sigma is None:
        args = f"--dataset {cell.dataset} --threat {cell.threat}"
    else:
        args = f"--dataset {cell.dataset} --sigma {cell.sigma:g}"
    args += f" --activation {cell.activation}"
    if cell.seed is not None:
        args += f" --seed {cell.seed}"
    paths = generated_paths(cell)
    if paths:
        args += f" --shards {paths[0]} --labels {paths[1]} --num-generated {cell.num_images}"
    return args


def dvc_cells(params: Mapping[str, Any]) -> dict[str, Any]:
    """What dvc.yaml's grid stages iterate over (DVC's templating cannot take a product of axes itself).

    Only the grids of pipeline.grids, as `dvc repro` builds what the pipeline section names. A cell
    without generated data lists train.npz (a dependency it has anyway) where the others list shards.
    Certified cells (a sigma axis) go to their own stages, smooth_train_cell and certify_cell.
    """
    found: dict[str, dict[str, Any]] = {"grid_cells": {}, "grid_results": {}, "smooth_cells": {}, "smooth_results": {}}
    for grid in params["pipeline"]["grids"]:
        for cell in cells(params, grid):
            shards, labels = generated_paths(cell) or (f"data/{cell.dataset}/train.npz",) * 2
            kind = "grid" if cell.sigma is None else "smooth"
            found[f"{kind}_cells"][cell.name] = {key: value for key, value in cell.as_dict().items()
                                                 if key != "grid"} | {"args": cell_args(cell), "shards": shards,
                                                                      "labels": labels}
            found[f"{kind}_results"][f"{grid}-{cell.name}"] = {"grid": grid, "cell": cell.name, "dataset": cell.dataset,
                                                               "threat": cell.threat, "sigma": cell.sigma}
    return found | {"external_sets": external_sets(params)}


def external_sets(params: Mapping[str, Any]) -> dict[str, Any]:
    """Datasets whose released sets (`datasets.<name>.external`) DVC's import_external stage brings in:
    those the main pipeline or a grid of pipeline.grids trains on with generator `external`."""
    used = set(params["pipeline"]["datasets"]) if params["generator"] == "external" else set()
    for grid in params["pipeline"]["grids"]:
        used |= {cell.dataset for cell in cells(params, grid) if cell.generator == "external"}
    return {name: {"labels": params["datasets"][name]["external"]["labels"]} for name in sorted(used)}


DVC_CELLS_HEADER = ("# Generated from params.yaml (pipeline.grids, grids, generator external) by `make grids`; do not edit.\n"
                    "# dvc.yaml's adv_train_cell, evaluate_cell, smooth_train_cell, certify_cell and import_external stages "
                    "iterate over it; "
                    "a test checks it is current.\n")


def write_dvc_cells(params: Mapping[str, Any], path: Path) -> None:
    text = DVC_CELLS_HEADER + yaml.safe_dump(dvc_cells(params), sort_keys=True)
    io.write_bytes(path, text.encode())
