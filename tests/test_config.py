"""params.yaml validation: every bad value is one line naming the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genrobust import config
from genrobust.errors import UserError

from .conftest import ROOT


def test_shipped_params_are_valid_and_resolve_per_dataset(params: dict) -> None:
    digits = config.resolve(params, "digits")
    cifar = config.resolve(params, "cifar10")
    assert digits["preset"] == "smoke" and cifar["preset"] == "paper"
    assert cifar["adv_train"]["model"] == {"arch": "wrn", "depth": 28, "width": 10, "activation": "silu"}
    assert cifar["adv_train"]["generated_fraction"] == 0.7 and cifar["adv_train"]["beta"] == 5.0
    assert digits["adv_train"]["model"]["depth"] < 28          # the preset overrides only what it names ...
    assert digits["adv_train"]["beta"] == 5.0                   # ... and keeps the rest


def test_explicit_preset_overrides_auto(params: dict) -> None:
    params = config.apply_overrides(params, ["preset=smoke"])
    assert config.resolve(config.validate(params), "cifar10")["preset"] == "smoke"


@pytest.mark.parametrize("override, expected", [
    ("adv_train.generated_fracton=0.3", "unknown key adv_train.generated_fracton"),
    ("adv_train.generated_fraction=1.5", "adv_train.generated_fraction = 1.5: must be at most 1"),
    ("threats.linf.eps=-0.1", "threats.linf.eps = -0.1: must be greater than 0"),
    ("adv_train.batch_size=0", "adv_train.batch_size = 0: must be at least 1"),
    ("adv_train.batch_size=big", "adv_train.batch_size = 'big': must be of type integer"),
    ("preset=fast", "preset = 'fast': must be one of 'auto', 'smoke', 'small', 'paper'"),
    ("generator=vae", "generator = 'vae': must be one of"),
    ("sample.shard_size=0", "sample.shard_size = 0: must be at least 1"),
    ("presets.smoke.sample.shard_size=0", "presets.smoke.sample.shard_size = 0: must be at least 1"),
    ("presets.smoke.sample.num_images=605", "sample.num_images = 605 (preset smoke, dataset digits): must be a multiple"),
    ("pipeline.datasets=[cifar9]", "pipeline.datasets names 'cifar9'"),
    ("datasets.mine={source: npz, num_classes: 10, auto_preset: smoke}", "datasets.mine: 'train' is a required property"),
    ("generator=ddpm", "add 'ddpm' there"),
])
def test_bad_values_are_named(params: dict, override: str, expected: str) -> None:
    with pytest.raises(UserError) as error:
        config.validate(config.apply_overrides(params, [override]))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_overrides_between_round_trips(params: dict) -> None:
    changed = config.apply_overrides(params, ["preset=smoke", "adv_train.model.activation=relu"])
    overrides = config.overrides_between(params, changed)
    assert sorted(overrides) == ['adv_train.model.activation="relu"', 'preset="smoke"']
    assert config.apply_overrides(params, overrides) == changed


def test_cli_reports_a_bad_param_in_one_line_without_traceback(tmp_path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace("generated_fraction: 0.7", "generated_fraction: 2"))
    run = subprocess.run([sys.executable, "-m", "genrobust", "prepare_data", "--dataset", "digits", "--params", str(bad),
                          "--train-out", str(tmp_path / "a.npz"), "--test-out", str(tmp_path / "b.npz"),
                          "--extra-out", str(tmp_path / "c.npz")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"genrobust prepare_data: error: {bad}: adv_train.generated_fraction = 2: must be at most 1"]


def test_values_are_typed_as_yaml_1_2_reads_them(params: dict) -> None:
    """`1e-6` is a number (YAML 1.1 and Snakemake's nested --config make it text), `yes` is text."""
    from genrobust import yaml12
    changed = config.validate(config.apply_overrides(params, ["gaussian.rank_tolerance=1e-6", "evaluate.n_examples=200"]))
    assert changed["gaussian"]["rank_tolerance"] == 1e-6 and changed["evaluate"]["n_examples"] == 200
    round_trip = config.apply_overrides(params, config.overrides_between(params, changed))
    assert config.validate(round_trip) == changed
    as_snakemake_reads_it = {"evaluate": {"n_examples": "200", "allow_fewer": "false"}, "gaussian": {"rank_tolerance": "1e-06"}}
    assert yaml12.typed(as_snakemake_reads_it) == {"evaluate": {"n_examples": 200, "allow_fewer": False},
                                                   "gaussian": {"rank_tolerance": 1e-6}}
    assert [yaml12.load(t) for t in ("yes", "0x1f", "-.inf", "null", "[1e-3, a]")][:2] == ["yes", 31]


def test_each_rule_gets_only_the_changes_it_reads() -> None:
    changes = ["evaluate.n_examples=32", "presets.smoke.adv_train.lr=0.2", "seed=1", "gaussian.rank_tolerance=1e-06"]
    assert config.changes_for(changes, ["evaluate", "threats"]) == ["evaluate.n_examples=32", "seed=1"]
    assert config.changes_for(changes, ["adv_train"]) == ["presets.smoke.adv_train.lr=0.2", "seed=1"]
    assert config.changes_for(changes, ["classifier"]) == ["seed=1"]


def test_a_float_dvc_wrote_without_a_dot_is_a_number(tmp_path) -> None:
    """`dvc exp run -S gaussian.rank_tolerance=1e-6` leaves a plain `1e-06` in params.yaml; a quoted one stays text."""
    edited = tmp_path / "params.yaml"
    edited.write_text((ROOT / "params.yaml").read_text().replace("rank_tolerance: 1.0e-6", "rank_tolerance: 1e-06"))
    assert config.load_params(edited)["gaussian"]["rank_tolerance"] == 1e-6
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text("value: '1e-06'\nplain: 1e-06\nyes_word: yes\n")
    assert config.read_yaml(quoted) == {"value": "1e-06", "plain": 1e-6, "yes_word": True}


def test_the_demo_overlay_only_swaps_the_smoke_diffusion_model_and_its_sampler_and_scores_more_points(params: dict) -> None:
    """`make demo` passes workflow/demo.yaml to Snakemake, which merges it over params.yaml as _merge does."""
    overlay = config.read_yaml(ROOT / "workflow" / "demo.yaml")
    assert set(overlay) == {"presets"} and set(overlay["presets"]) == {"smoke"}
    assert set(overlay["presets"]["smoke"]) == {"diffusion", "sample", "evaluate"}
    assert overlay["presets"]["smoke"]["evaluate"] == {"n_examples": 64}    # more test points than CI's, nothing else
    demo = config.resolve(config.validate(config._merge(params, overlay)), "digits")
    smoke = config.resolve(params, "digits")
    assert demo["diffusion"]["resolution"] == 8 and demo["sample"]["guidance"] > 1
    assert demo["sample"]["num_images"] == smoke["sample"]["num_images"]     # the same set size downstream
    assert {k: v for k, v in demo.items() if k not in ("diffusion", "sample", "evaluate")} == \
           {k: v for k, v in smoke.items() if k not in ("diffusion", "sample", "evaluate")}


def test_the_paper_preset_trains_and_samples_edms_cifar10_generator(params: dict) -> None:
    """NVlabs/edm train.py --cond=1 --arch=ddpmpp and training_loop.py's defaults; DM-Improves-AT's sampling."""
    diffusion = config.resolve(params, "cifar10")["diffusion"]
    assert diffusion["arch"] == "ddpmpp" and diffusion["ddpmpp"] == {
        "model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4, "attn_resolutions": [16], "dropout": 0.13,
        "label_dropout": 0.0}
    assert {key: diffusion[key] for key in ("optimizer", "lr", "lr_rampup_images", "weight_decay", "adam_eps",
                                            "grad_clip", "ema_halflife_images", "ema_rampup_ratio", "batch_size",
                                            "augment_p", "xflip", "precision")} == {
        "optimizer": "adam", "lr": 0.001, "lr_rampup_images": 10_000_000, "weight_decay": 0.0, "adam_eps": 1e-8,
        "grad_clip": None, "ema_halflife_images": 500_000, "ema_rampup_ratio": 0.05, "batch_size": 512,
        "augment_p": 0.12, "xflip": False, "precision": "fp32"}
    assert diffusion["steps"] * diffusion["batch_size"] == 200_000_000          # EDM's --duration=200 (Mimg)
    samples = {name: config.resolve(params, name)["sample"] for name in ("cifar10", "cifar100", "svhn")}
    assert [samples[name]["steps"] for name in samples] == [20, 25, 25]
    assert samples["cifar10"]["clamp_denoised"] is False and samples["cifar10"]["guidance"] == 1.0
    assert samples["svhn"]["filter_up_to"] == 0                                 # SVHN's sets are not selected


def test_both_ema_kinds_null_is_refused(params: dict) -> None:
    params["diffusion"]["ema_halflife_images"] = None
    with pytest.raises(UserError, match="ema_halflife_images and diffusion.ema_decay are both null"):
        config.validate(params)
