"""The memory a training step keeps, counted on the meta device before the first step, and the accumulation
chosen from it: paper-scale configurations that cannot fit an 80 GB GPU in one pass are split or refused."""

from __future__ import annotations

import pytest

from genrobust.errors import UserError
from genrobust.training.memory import GiB, accumulation_for, step_memory

WRN_28_10 = {"arch": "wrn", "depth": 28, "width": 10, "activation": "silu"}
WRN_70_16 = {"arch": "wrn", "depth": 70, "width": 16, "activation": "silu"}
H100 = 80 * GiB


def test_trades_activations_are_counted_for_both_forwards() -> None:
    fp32 = step_memory(WRN_28_10, 10, "trades", bf16=False)
    assert 105 * GiB < 2048 * fp32.per_image < 120 * GiB              # two forwards of 2048 images
    assert step_memory(WRN_28_10, 10, "pgd", bf16=False).per_image * 2 == fp32.per_image
    assert step_memory(WRN_28_10, 10, "trades", bf16=True).per_image == pytest.approx(fp32.per_image / 2, rel=0.02)
    assert fp32.static == 16 * 36_479_194                             # WRN-28-10's parameters x 16 bytes
    big = step_memory(WRN_70_16, 10, "trades", bf16=True)
    assert 55 * GiB < 512 * big.per_image < 66 * GiB                  # at the edge of an 80 GB H100


def test_auto_takes_the_fewest_micro_batches_that_fit_and_says_so() -> None:
    steps, line = accumulation_for(step_memory(WRN_28_10, 10, "trades", False), 2048, "auto", H100, "adv_train")
    assert steps == 2
    assert line.startswith("adv_train: 1024 images per micro-batch in fp32 keep about ") and \
        line.endswith("of the GPU's 80.0 GiB: accumulation_steps 2")
    assert accumulation_for(step_memory(WRN_28_10, 10, "trades", True), 512, "auto", H100, "adv_train")[0] == 1
    assert accumulation_for(step_memory(WRN_70_16, 10, "trades", True), 512, "auto", H100, "adv_train")[0] == 1
    assert accumulation_for(step_memory(WRN_70_16, 10, "trades", True), 1024, "auto", H100, "adv_train")[0] == 2
    assert accumulation_for(step_memory(WRN_70_16, 10, "trades", True), 512, "auto", None, "adv_train") == (1, None)


def test_a_configuration_that_cannot_fit_stops_with_its_numbers() -> None:
    memory = step_memory(WRN_70_16, 10, "trades", bf16=True)
    with pytest.raises(UserError, match=r"^adv_train: WRN-70-16: 1024 images per micro-batch in bf16 keep about "
                                        r"1\d\d\.\d GiB .* of the GPU's 80\.0 GiB: accumulation_steps 1 does not fit "
                                        r"\(90% usable\); set accumulation_steps to 2 or more, or auto$"):
        accumulation_for(memory, 1024, 1, H100, "adv_train: WRN-70-16")
    with pytest.raises(UserError, match=r"even one image per micro-batch needs \d+\.\d GiB in bf16; the GPU has 2\.0"):
        accumulation_for(memory, 512, "auto", 2 * GiB, "adv_train")
    assert accumulation_for(memory, 512, 4, H100, "adv_train")[0] == 4
