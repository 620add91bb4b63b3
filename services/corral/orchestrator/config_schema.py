"""Check a module's config against the JSON Schema it declared, with each problem naming its field.

The running module remains the judge: its msgspec type and `on_config` hooks decide. This
check catches what the module would pass over, and covers a module that is not running:

* an unknown top-level field is refused even when the module's Struct would ignore it, so a
  typo (`max_dept=64`) cannot look applied;
* while no instance runs, the whole document is checked against the last schema the module
  recorded (JSON Schema 2020-12, which `msgspec.json.schema` emits).

Messages end like msgspec's, "... - at `$.field`", so both kinds of check read alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

__all__ = ["check_config", "unknown_fields"]


def _path(parts: Iterable[Any]) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _top_object(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of the document itself, following a top-level `$ref` into `$defs`."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"))
        if isinstance(target, dict):
            return target
    return schema


def unknown_fields(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """One message per top-level key the schema does not declare (none if it declares none)."""
    properties = _top_object(schema).get("properties")
    if not isinstance(properties, dict) or not properties:
        return []
    known = ", ".join(sorted(properties))
    return [
        f"unknown config field {key!r} (the fields are {known}) - at `$.{key}`"
        for key in values
        if key not in properties
    ]


def check_config(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Every problem of `values` against `schema`; empty when it conforms."""
    problems = unknown_fields(schema, values)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return [f"the module's recorded config schema is not valid JSON Schema: {exc.message}"]
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        if error.validator == "additionalProperties" and not error.absolute_path and problems:
            continue  # already named field by field above
        problems.append(f"{error.message} - at `{_path(error.absolute_path)}`")
    return problems
