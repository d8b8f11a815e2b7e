"""Bad files handed to the stages: refused before any work, in one line that names the file, the bad
value and what is expected, with exit status 2, no traceback and no output written.

Most cases run `main` in-process (the CLI's own argument parsing and error printing, without a
torch import per case); a representative few run the real `python -m genrobust`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust.__main__ import main
from genrobust.models.checkpoint import build_classifier, save_classifier

from .conftest import ENV, ROOT, write_images

SPEC = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}


def _classifier(path: Path, num_classes: int = 10, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_classifier(path, build_classifier(SPEC, num_classes, [0.5] * 3, [0.25] * 3), SPEC, num_classes, {})
    return path


def _evaluate_argv(checkpoint: Path, test: Path, out: Path, *overrides: str) -> list[str]:
    return ["evaluate", "--dataset", "digits", "--threat", "linf", "--checkpoint", str(checkpoint), "--test", str(test),
            "--out", str(out), "--params", str(ROOT / "params.yaml"),
            *[arg for item in overrides for arg in ("--set", item)]]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run a stage as the CLI does; it must fail with exactly one error line, which is returned."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    line, = err.strip().splitlines()
    assert line.startswith(f"genrobust {argv[0]}: error: ")
    return line.removeprefix(f"genrobust {argv[0]}: error: ")


@pytest.fixture
def test_npz(tmp_path: Path) -> Path:
    write_images(tmp_path / "test.npz", 80)
    return tmp_path / "test.npz"


# --- checkpoints --------------------------------------------------------------------------

def test_a_missing_checkpoint_is_named(tmp_path, test_npz, capsys) -> None:
    missing = tmp_path / "models" / "model.pt"
    assert _refused(capsys, _evaluate_argv(missing, test_npz, tmp_path / "r.json")) == f"{missing}: checkpoint not found"
    assert not (tmp_path / "r.json").exists()


def test_a_plain_state_dict_is_not_taken_for_a_checkpoint(tmp_path, test_npz, capsys) -> None:
    """What RobustBench and most repositories ship: weights without the architecture that reads them."""
    bare = tmp_path / "bare.pt"
    torch.save(build_classifier(SPEC, 10, [0.5] * 3, [0.25] * 3).state_dict(), bare)
    line = _refused(capsys, _evaluate_argv(bare, test_npz, tmp_path / "r.json"))
    assert line.startswith(f"{bare}: holds a plain state dict or dict of ")
    assert line.endswith("expected a genrobust classifier checkpoint (made by train_classifier or adv_train)")


def test_a_pickled_module_is_refused_in_one_line(tmp_path, test_npz, capsys) -> None:
    """torch's own refusal of a pickled module runs over a dozen lines; the CLI keeps the first."""
    pickled = tmp_path / "module.pt"
    torch.save(build_classifier(SPEC, 10, [0.5] * 3, [0.25] * 3), pickled)
    line = _refused(capsys, _evaluate_argv(pickled, test_npz, tmp_path / "r.json"))
    assert line.startswith(f"{pickled}: not a readable torch file (Weights only load failed")
    assert line.endswith("expected a genrobust classifier checkpoint (made by train_classifier or adv_train)")


@pytest.mark.parametrize("named, expected", [
    ({"depth": 16}, "36 tensors missing (first 'layer.0.block.1.batchnorm_0.weight')"),
    ({"width": 2}, "33 of another shape (first 'layer.0.block.0.conv_0.weight': (16, 16, 3, 3), "
                   "expected (32, 16, 3, 3))"),
])
def test_weights_of_another_architecture_are_named(tmp_path, test_npz, capsys, named, expected) -> None:
    checkpoint = _classifier(tmp_path / "m.pt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"] = dict(SPEC, **named)                    # e.g. WRN-16-1 named, WRN-10-1 weights inside
    torch.save(ckpt, checkpoint)
    line = _refused(capsys, _evaluate_argv(checkpoint, test_npz, tmp_path / "r.json"))
    spec = ", ".join(f"{key} {value}" for key, value in ckpt["model"].items())
    assert line.startswith(f"{checkpoint}: weights do not fit the architecture it names ({spec}): ")
    assert expected in line


def test_an_architecture_genrobust_cannot_build_is_named(tmp_path, test_npz, capsys) -> None:
    checkpoint = _classifier(tmp_path / "m.pt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"] = dict(SPEC, arch="resnet50")
    torch.save(ckpt, checkpoint)
    line = _refused(capsys, _evaluate_argv(checkpoint, test_npz, tmp_path / "r.json"))
    assert line == (f"{checkpoint}: names an architecture this genrobust cannot build (arch resnet50, depth 10, "
                    f"width 1, activation relu): unknown architecture 'resnet50'; expected wrn or preact_resnet")


def test_a_checkpoint_of_another_class_count_is_named(tmp_path, test_npz, capsys) -> None:
    checkpoint = _classifier(tmp_path / "m.pt", num_classes=10)
    line = _refused(capsys, _evaluate_argv(checkpoint, test_npz, tmp_path / "r.json", "datasets.digits.num_classes=12"))
    assert line == f"{checkpoint}: made for 10 classes; this dataset has 12 (datasets.<name>.num_classes)"


def test_nan_weights_stop_the_evaluation_and_write_nothing(tmp_path, test_npz, capsys) -> None:
    checkpoint = _classifier(tmp_path / "m.pt")
    ckpt = torch.load(checkpoint, weights_only=True)
    name = next(key for key in ckpt["state_dict"] if key.endswith("weight"))
    ckpt["state_dict"][name][0] = float("nan")
    torch.save(ckpt, checkpoint)
    line = _refused(capsys, _evaluate_argv(checkpoint, test_npz, tmp_path / "r.json",
                                           "presets.smoke.evaluate.n_examples=8"))
    assert line == (f"{checkpoint}: the model produced NaN or infinite logits for 8 of 8 images; "
                    f"expected finite logits, so refusing to evaluate it")
    assert not (tmp_path / "r.json").exists()


# --- evaluation must not be fooled ---------------------------------------------------------

def test_a_test_set_smaller_than_n_examples_is_refused_unless_allowed(tmp_path, capsys) -> None:
    write_images(tmp_path / "test.npz", 20)
    checkpoint = _classifier(tmp_path / "m.pt")
    line = _refused(capsys, _evaluate_argv(checkpoint, tmp_path / "test.npz", tmp_path / "r.json"))
    assert line == (f"{tmp_path / 'test.npz'}: holds 20 test points but evaluate.n_examples = 32; lower "
                    f"evaluate.n_examples, or set evaluate.allow_fewer: true to score all 20 (the result then says "
                    f"partial: true)")
    assert not (tmp_path / "r.json").exists()


# --- data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arrays, expected", [
    ({"label": np.zeros(4, np.int64)},
     "missing array 'image'; expected uint8 'image' (N,32,32,3) and int64 'label' (N,)"),
    ({"image": np.zeros((4, 32, 32, 3), np.uint8)},
     "missing array 'label'; expected uint8 'image' (N,32,32,3) and int64 'label' (N,)"),
    ({"image": np.zeros((4, 28, 28), np.uint8), "label": np.zeros(4, np.int64)},
     "'image' is uint8 (4, 28, 28); expected uint8 (N, 32, 32, 3)"),
    ({"image": np.zeros((4, 32, 32, 3), np.float32), "label": np.zeros(4, np.int64)},
     "'image' is float32 (4, 32, 32, 3); expected uint8 (N, 32, 32, 3)"),
    ({"image": np.zeros((4, 32, 32, 3), np.uint8), "label": np.zeros(4, np.int32)},
     "'label' is int32 (4,); expected int64 (4,)"),
    ({"image": np.zeros((4, 32, 32, 3), np.uint8), "label": np.array([0, 1, 12, 3])},
     "label 12 outside the class range [0, 9]"),
], ids=["no-image", "no-label", "shape", "image-dtype", "label-dtype", "label-range"])
def test_a_bad_test_file_is_named(tmp_path, capsys, arrays, expected) -> None:
    bad = tmp_path / "test.npz"
    np.savez(bad, **arrays)
    line = _refused(capsys, _evaluate_argv(_classifier(tmp_path / "m.pt"), bad, tmp_path / "r.json"))
    assert line == f"{bad}: {expected}"
    assert not (tmp_path / "r.json").exists()


def test_train_classifier_refuses_a_bad_train_file_before_training(tmp_path, capsys) -> None:
    bad = tmp_path / "train.npz"
    np.savez(bad, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.array([0, 1, 10, 3]))
    line = _refused(capsys, ["train_classifier", "--dataset", "digits", "--train", str(bad), "--out",
                             str(tmp_path / "m.pt"), "--work", str(tmp_path / "work"), "--params",
                             str(ROOT / "params.yaml")])
    assert line == f"{bad}: label 10 outside the class range [0, 9]"
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "work").exists()


def test_a_grid_that_names_an_unknown_axis_is_named(tmp_path, capsys) -> None:
    line = _refused(capsys, ["prepare_data", "--dataset", "digits", "--train-out", str(tmp_path / "a.npz"),
                             "--test-out", str(tmp_path / "b.npz"), "--extra-out", str(tmp_path / "c.npz"), "--params", str(ROOT / "params.yaml"),
                             "--set", "grids.mine={dataset: digits, epochs: [1, 2]}"])
    assert line.startswith(f"{ROOT / 'params.yaml'}: unknown key grids.mine.epochs; allowed keys here: ")
    assert "num_images" in line and not list(tmp_path.iterdir())


# --- the real CLI, as a pipeline job runs it ------------------------------------------------

def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrobust", *argv], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_the_real_cli_refuses_a_train_set_with_a_class_missing(tmp_path) -> None:
    train = tmp_path / "train.npz"
    np.savez(train, image=np.zeros((18, 32, 32, 3), np.uint8), label=np.arange(18, dtype=np.int64) % 9)
    done = _cli("fit_gaussian", "--dataset", "digits", "--train", str(train), "--out", str(tmp_path / "fit.npz"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"genrobust fit_gaussian: error: {train}: class 9 has no images; the per-class Gaussian needs every class"]
    assert not (tmp_path / "fit.npz").exists()


def test_the_real_cli_refuses_a_checkpoint_of_another_class_count(tmp_path) -> None:
    write_images(tmp_path / "test.npz", 80, num_classes=10)
    checkpoint = _classifier(tmp_path / "m.pt", num_classes=100)
    argv = _evaluate_argv(checkpoint, tmp_path / "test.npz", tmp_path / "r.json")
    done = _cli(*argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"genrobust evaluate: error: {checkpoint}: made for 100 classes; this dataset has 10 "
        f"(datasets.<name>.num_classes)"]
    verbose = _cli(*argv, "--verbose")
    assert "Traceback (most recent call last)" in verbose.stderr and verbose.returncode == 2
    assert not (tmp_path / "r.json").exists()


def test_the_real_cli_refuses_a_diffusion_train_set_with_a_class_missing(tmp_path) -> None:
    train = tmp_path / "train.npz"
    np.savez(train, image=np.zeros((18, 32, 32, 3), np.uint8), label=np.arange(18, dtype=np.int64) % 9)
    done = _cli("train_diffusion", "--dataset", "digits", "--generator", "edm", "--train", str(train),
                "--out", str(tmp_path / "model.pt"), "--work", str(tmp_path / "work"))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"genrobust train_diffusion: error: {train}: class 9 has no images (1 of 10 classes missing); "
        "the class-conditional diffusion model needs at least one image of every class"]
    assert not (tmp_path / "model.pt").exists()
