"""The CLI as users meet it: every stage documents itself, and a missing or wrong argument is named.

The exhaustive checks call `main` in-process (argparse behaves the same there, without a torch
import per case); a few run the real `python -m genrobust` to check exit status and stderr.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from genrobust.__main__ import STAGES, main

from .conftest import ENV, ROOT


def _required(stage: str) -> list[str]:
    return [flag for flag, options in STAGES[stage][1] if options.get("required")]


def _argv_without(stage: str, missing: str) -> list[str]:
    """Every required argument of `stage` but `missing`, each with a value argparse accepts."""
    argv = [stage]
    for flag, options in STAGES[stage][1]:
        if options.get("required") and flag != missing:
            value = "0.5" if options.get("type") is float else "x"
            argv += [flag, options["choices"][0] if "choices" in options else value]
    return argv


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrobust", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_documents_every_argument(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([stage, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert STAGES[stage][0] in shown
    for flag, options in STAGES[stage][1]:
        assert flag in shown and options["help"].split()[0] in shown, flag
    for common in ("--params", "--set", "--verbose"):
        assert common in shown


@pytest.mark.parametrize("stage, flag", [(stage, flag) for stage in sorted(STAGES) for flag in _required(stage)])
def test_a_missing_required_argument_is_named(stage: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(_argv_without(stage, flag))
    assert done.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"genrobust {stage}: error: the following arguments are required: {flag}"


def test_top_level_help_lists_every_stage_and_a_missing_stage_is_named() -> None:
    helped = _cli("--help")
    assert helped.returncode == 0
    for stage, (help_text, _, _) in STAGES.items():
        assert stage in helped.stdout and help_text[:30] in " ".join(helped.stdout.split()), stage
    bare = _cli()
    assert bare.returncode == 2
    assert bare.stderr.strip().splitlines()[-1] == "genrobust: error: the following arguments are required: STAGE"


def test_the_real_cli_names_a_missing_argument_a_bad_choice_and_an_unknown_stage() -> None:
    missing = _cli(*_argv_without("evaluate", "--checkpoint"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == \
        "genrobust evaluate: error: the following arguments are required: --checkpoint"
    choice = _cli("adv_train", "--dataset", "digits", "--threat", "linf2")
    assert choice.returncode == 2
    line = choice.stderr.strip().splitlines()[-1]     # Python 3.12 stopped quoting the choices
    assert line.replace("'", "") == \
        "genrobust adv_train: error: argument --threat: invalid choice: linf2 (choose from linf, l2)"
    unknown = _cli("evaluat")
    assert unknown.returncode == 2
    assert "argument STAGE: invalid choice: 'evaluat' (choose from " in unknown.stderr.strip().splitlines()[-1]


def test_an_unknown_dataset_is_one_line_and_verbose_adds_the_traceback(tmp_path) -> None:
    argv = ["prepare_data", "--dataset", "cifar9", "--train-out", str(tmp_path / "a.npz"),
            "--test-out", str(tmp_path / "b.npz"), "--extra-out", str(tmp_path / "c.npz")]
    quiet = _cli(*argv)
    assert quiet.returncode == 2
    line, = quiet.stderr.strip().splitlines()
    assert line.startswith("genrobust prepare_data: error: params.yaml: dataset 'cifar9' is not declared under "
                           "datasets (declared: ")
    assert "digits" in line
    verbose = _cli(*argv, "--verbose")
    assert verbose.returncode == 2
    assert verbose.stderr.startswith("Traceback") and verbose.stderr.strip().splitlines()[-1] == line
    assert not list(tmp_path.iterdir())
