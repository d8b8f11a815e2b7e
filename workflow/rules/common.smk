# Validation, settings and the command prefix shared by every rule.
import json
import os
import shlex
from pathlib import Path

from genrobust import code_deps
from genrobust import config as params_config
from genrobust import yaml12
from genrobust import gpu_lease
from genrobust import grids as grid_cells
from genrobust.shards import shard_count
from snakemake.exceptions import WorkflowError

# Validated with the same schema and loader as the CLI, so a bad value fails here, before any job. Strings that
# YAML 1.2 reads as numbers become numbers (Snakemake reads nested --config values as text).
PARAMS = params_config.validate(yaml12.typed(json.loads(json.dumps(config))),
                                "params.yaml (with --configfile/--config overrides)")
# What --configfile and --config changed, against the params.yaml that every CLI stage reads by default.
CHANGES = params_config.overrides_between(params_config.read_yaml("params.yaml"), PARAMS)


def _code_by_stage():
    """Each CLI stage's source files, as dvc.yaml lists them (tests/test_code_deps.py keeps those lists equal to
    the stage's real import closure): inputs of the rules, so Snakemake reruns what DVC reruns on a code change."""
    return {cli: sorted(code_deps.expand(deps, Path("."))) for cli, deps in code_deps.listed(Path("dvc.yaml")).items()}


CODE = _code_by_stage()


def all_cores():
    """The rule's threads: every core Snakemake was given. Commands that run no job (`--unlock`, `--lint`)
    give none, and Snakemake's `workflow.cores` then raises; any count serves there."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def overrides(*sections):
    """The changes a rule's stage needs, as `--set key=value`: only those that can alter what it reads,
    so that Snakemake's params trigger replans exactly the rules downstream of a change."""
    return " ".join(shlex.quote(f"--set={item}") for item in params_config.changes_for(CHANGES, sections))


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    threat="linf|l2",
    sigma=r"\d+(\.\d+)?",
    diffusion="edm|ddpm",
    generator="edm|ddpm|gaussian|external",
    shard=r"\d{5}",
    grid="[a-z][a-z0-9_]*",
    cell="[a-z][a-z0-9_]*",


def settings(*sections):
    """A rule's resolved settings as a string: Snakemake's params trigger reruns the rule when they change."""

    def resolve(wildcards):
        resolved = params_config.resolve(PARAMS, wildcards.dataset)
        return json.dumps({section: resolved[section] for section in sections}, sort_keys=True)

    return resolve


def pretrained_model(wildcards):
    """The released model `diffusion.pretrained` names for this dataset (train_diffusion then imports it)."""
    path = params_config.resolve(PARAMS, wildcards.dataset)["diffusion"]["pretrained"].get(wildcards.dataset)
    return [path] if path else []


def shard_files(directory, generator=None):
    """Every shard path of a generated set: the count follows from params (sample.num_images, oversampled
    for the generators and sizes shards.oversample says, as the stage computes it), so no checkpoint rule is needed."""

    def files(wildcards):
        count = shard_count(params_config.resolve(PARAMS, wildcards.dataset)["sample"],
                            generator or wildcards.diffusion)
        return [f"{directory.format(**wildcards)}/shard-{index:05d}.npz" for index in range(count)]

    return files


def generated_inputs(wildcards):
    """adv_train's generated data: the shards and labels of params' `generator`, or nothing for `none`."""
    generator = PARAMS["generator"]
    if generator == "none":
        return {}
    base = f"data/{wildcards.dataset}/generated/{generator}"
    return {"manifest": f"{base}/shards/manifest.json", "labels": f"{base}/labels.npz"}


def generated_args(wildcards, input):
    if "labels" not in input.keys():
        return ""
    return f"--shards {os.path.dirname(input.manifest)} --labels {input.labels}"


def launcher(wildcards, resources):
    """`python`, or torchrun with one data-parallel process per GPU when a rule is given more than one; on a
    machine with several GPUs, behind a lease of the job's own cards (genrobust/gpu_lease.py)."""
    return gpu_lease.launcher(int(getattr(resources, "gpu", 0) or 0))


def single_process(wildcards, resources):
    """The launcher of a stage that runs as one process: `python`, behind a lease of its card on a multi-GPU machine."""
    return gpu_lease.launcher(int(getattr(resources, "gpu", 0) or 0), data_parallel=False)


# Grid cells (workflow/rules/grids.smk): looked up by name from their output paths.
CELLS = grid_cells.all_cells(PARAMS)
CELL_BY_NAME = {cell.name: cell for cell in CELLS.values()}


def cell_of(wildcards):
    try:
        return CELL_BY_NAME[wildcards.cell]
    except KeyError:
        raise ValueError(f"no grid in params.yaml has a cell named {wildcards.cell!r}") from None


def cell_inputs(wildcards):
    cell = cell_of(wildcards)
    inputs = {"train": f"data/{cell.dataset}/train.npz"}
    paths = grid_cells.generated_paths(cell)
    if paths:
        inputs.update(manifest=f"{paths[0]}/manifest.json", labels=paths[1])
    return inputs


def cell_settings(section):
    """A cell rule's settings for the params trigger (not its grid: a cell shared by grids is one job)."""

    def resolve(wildcards):
        cell = cell_of(wildcards)
        described = {key: value for key, value in cell.as_dict().items() if key != "grid"}
        resolved = params_config.resolve(PARAMS, cell.dataset)
        threat = PARAMS["threats"][cell.threat] if cell.sigma is None else None   # certified cells have none
        return json.dumps({section: resolved[section], "dataset": resolved["dataset"], "cell": described,
                           "threat": threat}, sort_keys=True)

    return resolve


def grid_results(grid):
    return [f"results/grid/{grid}/{cell.name}.json" for (owner, _), cell in CELLS.items() if owner == grid]
