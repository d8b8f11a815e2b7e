"""A threat model as one value: the norm, the radius, and the step size PGD takes inside it.

It travels from params.yaml's `threats:` to every attack (training, validation, sanity checks,
AutoAttack), so a call site cannot mix up the order of three loose numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class Threat:
    norm: str           # Linf | L2
    eps: float          # radius, in [0, 1] pixel units
    step_size: float    # PGD's step (AutoAttack chooses its own)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected Linf or L2")

    @classmethod
    def from_params(cls, spec: Mapping[str, Any]) -> Threat:
        """From a `threats.<name>` entry of params.yaml."""
        return cls(spec["norm"], float(spec["eps"]), float(spec["step_size"]))
