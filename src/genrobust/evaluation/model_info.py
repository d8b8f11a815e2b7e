"""A RobustBench model-info JSON (model_info/{dataset}/{threat}/{name}.json in their repository), so a user can submit.

Generated data from a model trained on the training set alone is not "additional data" in
RobustBench's sense (which means extra real images), so such entries say false, as
Wang et al. 2023's do; the footnote says what was generated and how much.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Mapping

ARCHITECTURES = {"wrn": "WideResNet-{depth}-{width}", "preact_resnet": "PreActResNet-{depth}"}


def _eps(norm: str, eps: float) -> str:
    """RobustBench writes Linf budgets as k/255 and L2 budgets as decimals."""
    if norm == "Linf":
        fraction = Fraction(eps).limit_denominator(255)
        return f"{round(float(fraction) * 255)}/255" if abs(float(fraction) - eps) < 1e-9 else f"{eps:g}"
    return f"{eps:g}"


def model_info(record: Mapping[str, Any], name: str) -> dict[str, Any]:
    model = record["model"]
    footnote = (f"Adversarial training ({record.get('training_loss')}) with {record['num_generated']} generated images "
                f"({record['generator']}), {record.get('images_seen')} images seen, {model['activation']} activation; "
                f"evaluated on {record['n_examples']} test points with pyautoattack ({record['attack']['version']}).")
    return {
        "link": "",
        "name": name,
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": record["dataset"],
        "venue": "",
        "architecture": ARCHITECTURES.get(model["arch"], model["arch"]).format(**model),
        "eps": _eps(record["norm"], record["eps"]),
        "clean_acc": f"{100 * record['clean_accuracy']:.2f}",
        "reported": f"{100 * record['robust_accuracy']:.2f}",
        "autoattack_acc": f"{100 * record['robust_accuracy']:.2f}",
        "footnote": footnote,
        "unreliable": bool(record.get("sanity", {}).get("warnings")),
    }
