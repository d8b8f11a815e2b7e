"""`python -m genrobust <stage>`: the one entry point that Snakemake rules and DVC stages both call.

Every stage takes explicit input and output paths (the pipelines own the layout) and reads
its settings from params.yaml, resolved for the dataset's preset, plus any `--set` overrides
(how Snakemake's `--config` reaches us). A `UserError` becomes one line on stderr and exit
status 2; `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from . import config
from .errors import UserError


def _stage(name: str, help_text: str, *arguments: tuple[str, dict[str, Any]]) -> Callable:
    def register(func: Callable) -> Callable:
        STAGES[name] = (help_text, arguments, func)
        return func
    return register


STAGES: dict[str, tuple[str, tuple, Callable]] = {}
DATASET = ("--dataset", {"required": True, "help": "a dataset declared under `datasets:` in params.yaml"})
GENERATOR = ("--generator", {"required": True, "choices": ["edm", "ddpm"], "help": "diffusion model kind"})
THREAT = ("--threat", {"required": True, "choices": ["linf", "l2"], "help": "threat model (see `threats:`)"})
SHARD = ("--shard", {"type": int, "action": "append",
                     "help": "make only this shard (repeatable) and no manifest; without it: every missing shard, then the manifest"})
SIGMA = ("--sigma", {"required": True, "type": float,
                     "help": "Gaussian noise standard deviation on [0, 1] pixels (Cohen et al.: 0.12, 0.25, 0.5, 1.0)"})
WORK = ("--work", {"required": True, "type": Path, "help": "resume state; not a pipeline output, so never deleted"})
RESTART = ("--restart", {"action": "store_true",
                         "help": "train from step 0 on purpose: set the resume state in --work aside (as *.stale)"})


CELL = (("--num-generated", {"type": int, "help": "use only the first N kept generated images (a grid cell)"}),
        ("--activation", {"choices": ["relu", "silu", "gelu", "softplus"],
                          "help": "override the stage's model.activation (a grid cell)"}),
        ("--seed", {"type": int, "help": "override params' seed for this training run (a grid's seed axis)"}))


def _cell_settings(settings: dict, args: argparse.Namespace, stage: str) -> None:
    """A training stage's generated-data arguments checked, and a grid cell's overrides applied."""
    if (args.shards is None) != (args.labels is None):
        raise UserError(f"{stage}: give both --shards and --labels, or neither (no generated data)")
    if args.num_generated is not None and args.shards is None:
        raise UserError(f"{stage}: --num-generated needs --shards and --labels")
    if args.activation:
        settings[stage]["model"] = dict(settings[stage]["model"], activation=args.activation)
    if args.seed is not None:
        settings["seed"] = args.seed


def _path(flag: str, help_text: str, required: bool = True) -> tuple[str, dict[str, Any]]:
    return flag, {"required": required, "type": Path, "help": help_text}


@_stage("prepare_data", "load a dataset and write uint8 32x32x3 train/test npz files", DATASET,
        _path("--train-out", "train npz to write"), _path("--test-out", "test npz to write"),
        _path("--extra-out", "npz of the training images a `subset` leaves out (extra real data) to write"))
def _prepare_data(settings: dict, args: argparse.Namespace) -> None:
    from .data.prepare import prepare_data
    prepare_data(settings, args.train_out, args.test_out, args.extra_out)


@_stage("train_diffusion", "train a class-conditional diffusion model (resumable)", DATASET, GENERATOR,
        _path("--train", "train npz"), _path("--out", "model checkpoint to write"), WORK, RESTART)
def _train_diffusion(settings: dict, args: argparse.Namespace) -> None:
    from .diffusion.train import train_diffusion
    train_diffusion(settings, args.generator, args.train, args.out, args.work, args.restart)


@_stage("sample_diffusion", "generate class-balanced samples as shards plus manifest.json", DATASET, GENERATOR,
        _path("--model", "diffusion checkpoint"), _path("--out", "shard directory"), SHARD)
def _sample_diffusion(settings: dict, args: argparse.Namespace) -> None:
    from .diffusion.sample import sample_diffusion
    sample_diffusion(settings, args.generator, args.model, args.out, args.shard)


@_stage("fit_gaussian", "fit a Gaussian per class to the training images", DATASET,
        _path("--train", "train npz"), _path("--out", "fit npz to write"))
def _fit_gaussian(settings: dict, args: argparse.Namespace) -> None:
    from .baselines.gaussian import fit_gaussian
    fit_gaussian(settings, args.train, args.out)


@_stage("sample_gaussian", "sample the per-class Gaussians into shards plus manifest.json", DATASET,
        _path("--fit", "fit npz"), _path("--out", "shard directory"), SHARD)
def _sample_gaussian(settings: dict, args: argparse.Namespace) -> None:
    from .baselines.gaussian import sample_gaussian
    sample_gaussian(settings, args.fit, args.out, args.shard)


@_stage("train_classifier", "train the standard (non-robust) classifier (resumable)", DATASET,
        _path("--train", "train npz"), _path("--out", "checkpoint to write"), WORK, RESTART)
def _train_classifier(settings: dict, args: argparse.Namespace) -> None:
    from .training.standard import train_classifier
    train_classifier(settings, args.train, args.out, args.work, args.restart)


@_stage("import_external", "import released npz files (datasets.<name>.external) as shards",
        DATASET, _path("--out", "shard directory"))
def _import_external(settings: dict, args: argparse.Namespace) -> None:
    from .data.external import import_settings
    import_settings(settings, args.out)


@_stage("quality", "judge a generated set: FID, classifier FD, class agreement, ARC", DATASET,
        _path("--shards", "shard directory"), _path("--train", "train npz (the real images)"),
        _path("--classifier", "standard classifier checkpoint"), _path("--out", "quality JSON to write"),
        _path("--discriminator", "robust real-vs-generated discriminator checkpoint to write"))
def _quality(settings: dict, args: argparse.Namespace) -> None:
    from .quality.stage import quality
    quality(settings, args.shards, args.train, args.classifier, args.out, args.discriminator)


@_stage("pseudo_label", "label generated images with the standard classifier", DATASET,
        _path("--classifier", "standard classifier checkpoint"), _path("--shards", "shard directory"),
        _path("--quality", "the set's quality JSON (its figures travel into the labels' provenance)"),
        _path("--discriminator", "the set's ARC discriminator (pseudo_label.mode: arc ranks by it)"),
        _path("--out", "labels npz to write"))
def _pseudo_label(settings: dict, args: argparse.Namespace) -> None:
    from .pseudo_label import pseudo_label
    pseudo_label(settings, args.classifier, args.shards, args.quality, args.discriminator, args.out)


@_stage("adv_train", "adversarial training on real + generated batches (resumable)", DATASET, THREAT,
        _path("--train", "train npz"), _path("--shards", "generated shard directory", required=False),
        _path("--labels", "pseudo-labels npz of those shards", required=False),
        _path("--out", "checkpoint to write: the best by held-out PGD accuracy (the last without validation)"),
        _path("--last", "checkpoint of the last epoch to write"),
        _path("--metrics", "per-epoch metrics TSV to write (dvc plots draws it)"), WORK, RESTART,
        *CELL)
def _adv_train(settings: dict, args: argparse.Namespace) -> None:
    from .training.adversarial import adv_train
    from .training.mixed import Outputs
    _cell_settings(settings, args, "adv_train")
    adv_train(settings, args.threat, args.train, Outputs(args.out, args.last, args.metrics), args.work,
              args.shards, args.labels, args.num_generated, args.restart)


@_stage("smooth_train", "Gaussian-noise training on real + generated batches (resumable)", DATASET, SIGMA,
        _path("--train", "train npz"), _path("--shards", "generated shard directory", required=False),
        _path("--labels", "pseudo-labels npz of those shards", required=False),
        _path("--out", "checkpoint to write: the best by held-out noisy accuracy (the last without validation)"),
        _path("--last", "checkpoint of the last epoch to write"),
        _path("--metrics", "per-epoch metrics TSV to write"), WORK, RESTART, *CELL)
def _smooth_train(settings: dict, args: argparse.Namespace) -> None:
    from .training.mixed import Outputs
    from .training.smoothing import smooth_train
    _cell_settings(settings, args, "smooth_train")
    smooth_train(settings, args.sigma, args.train, Outputs(args.out, args.last, args.metrics), args.work,
                 args.shards, args.labels, args.num_generated, args.restart)


@_stage("certify", "certified L2 accuracy of the smoothed classifier (resumable)",
        DATASET, SIGMA, _path("--checkpoint", "base classifier checkpoint"), _path("--test", "test npz"),
        _path("--out", "certified result JSON to write"), WORK,
        ("--restart", {"action": "store_true", "help": "certify from the first point: set the saved rows aside"}))
def _certify(settings: dict, args: argparse.Namespace) -> None:
    from .certification.certify import certify
    certify(settings, args.sigma, args.checkpoint, args.test, args.out, args.work, args.restart)


@_stage("evaluate", "AutoAttack on the test set; writes the result JSON", DATASET, THREAT,
        _path("--checkpoint", "classifier checkpoint (any genrobust checkpoint, in the DAG or not)"),
        _path("--test", "test npz"), _path("--out", "result JSON to write"),
        _path("--dvc-lock", "refuse the checkpoint unless its md5 is the one this dvc.lock records for it "
                            "(after `dvc pull`: score exactly the shared model)", required=False),
        _path("--model-info", "RobustBench model-info JSON to write (default: beside --out, .model_info.json)",
              required=False))
def _evaluate(settings: dict, args: argparse.Namespace) -> None:
    from .evaluation.evaluate import evaluate
    evaluate(settings, args.threat, args.checkpoint, args.test, args.out, args.dvc_lock, args.model_info)


@_stage("report", "summary table, plots and scaling fit of every result JSON found",
        _path("--results", "results directory to scan (results/*_*.json and results/grid/*/*.json)"),
        _path("--summary-csv", "CSV to write"), _path("--summary-md", "Markdown table to write"),
        _path("--scaling", "scaling-fit JSON to write"), _path("--plots", "directory for the PNG figures"))
def _report(settings: dict, args: argparse.Namespace) -> None:
    from .report.report import report
    report(args.results, args.summary_csv, args.summary_md, args.scaling, args.plots)


@_stage("grid_cells", "write the cells of pipeline.grids for dvc.yaml's grid stages (make grids)",
        _path("--out", "YAML file to write (dvc.yaml reads workflow/grid_cells.yaml)"))
def _grid_cells(params: dict, args: argparse.Namespace) -> None:
    from .grids import write_dvc_cells
    write_dvc_cells(params, args.out)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="genrobust", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (help_text, arguments, _) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        for flag, options in arguments:
            stage.add_argument(flag, **options)
        stage.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
        stage.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a param, e.g. --set preset=smoke (repeatable)")
        stage.add_argument("--verbose", action="store_true", help="show tracebacks")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from . import distributed  # imports torch: not needed for --help or a usage error
    try:
        params = config.load_params(args.params, args.overrides)
        settings = config.resolve(params, args.dataset, str(args.params)) if hasattr(args, "dataset") else params
        distributed.start()
        STAGES[args.stage][2](settings, args)
    except UserError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"genrobust {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
