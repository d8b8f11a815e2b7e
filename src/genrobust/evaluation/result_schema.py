"""The result JSON's contract (workflow/schemas/result.schema.yaml), checked whenever one is written or read."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from ..config import describe_error
from ..errors import UserError

RESULT_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "result.schema.yaml"   # package data


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(yaml.safe_load(RESULT_SCHEMA.read_text()))


def validate_result(record: Mapping[str, Any], where: str) -> None:
    """Refuse a result with a missing or wrongly typed field, naming the field and what was expected."""
    errors = list(_validator().iter_errors(record))
    if errors:
        raise UserError(f"{where}: result does not follow {RESULT_SCHEMA.name}: "
                        f"{describe_error(jsonschema.exceptions.best_match(errors))}")
