"""The result JSONs' contracts (workflow/schemas/result.schema.yaml for AutoAttack, certified.schema.yaml for
randomized smoothing), checked whenever one is written or read."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from ..config import describe_error
from ..errors import UserError

RESULT_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "result.schema.yaml"   # package data
CERTIFIED_SCHEMA = RESULT_SCHEMA.with_name("certified.schema.yaml")


@lru_cache(maxsize=None)
def _validator(schema: Path) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(yaml.safe_load(schema.read_text()))


def validate_result(record: Mapping[str, Any], where: str, schema: Path = RESULT_SCHEMA) -> None:
    """Refuse a result with a missing or wrongly typed field, naming the field and what was expected."""
    errors = list(_validator(schema).iter_errors(record))
    if errors:
        raise UserError(f"{where}: result does not follow {schema.name}: "
                        f"{describe_error(jsonschema.exceptions.best_match(errors))}")
