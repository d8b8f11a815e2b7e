"""What makes a result trustworthy: gradient-masking checks, the result schema, the RobustBench info."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from genrobust.data.sources import digits
from genrobust.data.transform import to_tensor
from genrobust.errors import UserError
from genrobust.evaluation.autoattack import run_autoattack
from genrobust.evaluation.model_info import model_info
from genrobust.evaluation.result_schema import validate_result
from genrobust.evaluation.sanity import sanity_checks
from genrobust.training.common import new_model
from genrobust.training.loop import Recipe, TrainingData, fit
from genrobust.training.mixing import BatchMixer

from .conftest import LINF


class Quantised(nn.Module):
    """Rounds its input to black and white: gradients vanish, so PGD fails without the model being robust."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x))


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    train_x, train_y, test_x, test_y = digits(0.2, seed=0)
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "silu"}
    recipe = Recipe("ce", 80, 0.1, 0.9, True, 5e-4, 0.1, 0.99, 0)
    model = fit(new_model(spec, 10, train_x, 0), TrainingData(train_x, train_y), BatchMixer(len(train_x), 0, 64, 0.0, 0),
                recipe, tmp_path_factory.mktemp("work"), log=lambda _: None).last
    return model, to_tensor(test_x[:64], torch.device("cpu")), torch.from_numpy(test_y[:64])


@pytest.mark.parametrize("masked", [False, True])
def test_sanity_checks_fire_on_a_gradient_masked_model_only(digits_model, masked: bool) -> None:
    model, x, y = digits_model
    model = Quantised(model).eval() if masked else model
    attack = run_autoattack(model, x, y, LINF, "custom", ["apgd-ce"], 64, 0)
    sanity = sanity_checks(model, x, y, LINF, attack.clean_accuracy, attack.robust_accuracy, 64, 0)
    failed = {name for name, check in sanity["checks"].items() if not check["passed"]}
    if masked:     # PGD cannot move the rounded input: no fall at 2 eps, AutoAttack close to clean
        assert {"pgd_falls_when_eps_doubles", "robust_plausibly_below_clean"} <= failed, sanity
        assert len(sanity["warnings"]) == len(failed)
    else:          # an honest model: PGD falls at 2 eps, AutoAttack well below clean
        assert not failed and sanity["warnings"] == [], sanity


def _valid_result() -> dict:
    sha = "0" * 64
    return {"dataset": "digits", "threat": "linf", "norm": "Linf", "eps": 8 / 255, "preset": "smoke",
            "clean_accuracy": 0.9, "robust_accuracy": 0.45, "per_attack_accuracy": {"apgd-ce": 0.5, "apgd-t": 0.45},
            "attack": {"package": "pyautoattack", "version": "standard", "attacks": ["apgd-ce", "apgd-t"], "seed": 0},
            "n_examples": 64, "n_examples_requested": 64, "test_set_size": 360,
            "model": {"arch": "wrn", "depth": 10, "width": 1, "activation": "silu"}, "generator": "edm",
            "num_generated": 600, "images_seen": 12800,
            "hashes": {"checkpoint_sha256": sha, "test_data_sha256": sha, "generated_manifest_sha256": None},
            "package_versions": {"python": "3.11", "torch": "2.14.1", "pyautoattack": "0.2.0"}, "device": "cpu",
            "stage_wall_time_s": {"evaluate": 1.0}, "stage_gpu_hours": {"evaluate": 0.0},
            "sanity": {"checks": {}, "warnings": []}, "training": {"history": [], "best_epoch": None}}


def test_the_schema_accepts_a_full_result_and_names_a_missing_or_mistyped_field() -> None:
    validate_result(_valid_result(), "r.json")
    missing = _valid_result()
    del missing["hashes"]["checkpoint_sha256"]
    with pytest.raises(UserError, match=r"r.json: result does not follow result.schema.yaml: hashes: "
                                        r"'checkpoint_sha256' is a required property"):
        validate_result(missing, "r.json")
    mistyped = copy.deepcopy(_valid_result())
    mistyped["robust_accuracy"] = "45%"
    with pytest.raises(UserError, match=r"robust_accuracy = '45%': must be of type number"):
        validate_result(mistyped, "r.json")
    out_of_range = _valid_result()
    out_of_range["clean_accuracy"] = 90.0
    with pytest.raises(UserError, match=r"clean_accuracy = 90.0: must be at most 1"):
        validate_result(out_of_range, "r.json")


def test_robustbench_model_info_uses_their_conventions() -> None:
    info = model_info(_valid_result(), "genrobust_digits_linf")
    assert info["eps"] == "8/255" and info["clean_acc"] == "90.00" and info["autoattack_acc"] == "45.00"
    assert info["architecture"] == "WideResNet-10-1" and info["additional_data"] is False
    l2 = dict(_valid_result(), norm="L2", eps=0.5)
    assert model_info(l2, "x")["eps"] == "0.5"
    json.dumps(info)


def test_every_stage_records_the_flags_that_change_its_numbers() -> None:
    """TF32, cuDNN's choices and the stage's precision travel with the artifacts, as the wall times do."""
    from genrobust.provenance import StageClock
    upstream = StageClock("adv_train")
    upstream.precision = "bf16"
    meta = StageClock("evaluate", upstream.meta()).meta()
    assert set(meta["stage_numerics"]) == {"adv_train", "evaluate"}
    assert meta["stage_numerics"]["adv_train"]["precision"] == "bf16"
    assert meta["stage_numerics"]["evaluate"]["precision"] == "fp32"
    assert {"tf32_matmul", "tf32_cudnn", "cudnn_benchmark", "cudnn_deterministic", "float32_matmul_precision",
            "deterministic_algorithms"} <= set(meta["stage_numerics"]["evaluate"])
