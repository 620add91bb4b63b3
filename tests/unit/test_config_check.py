"""The orchestrator's config checks against a module's JSON Schema, and `key=value` parsing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import pytest

from corral.cli.config_cmd import parse_assignments
from corral.orchestrator.config_schema import check_config, unknown_fields


class Limits(msgspec.Struct):
    steps: Annotated[int, msgspec.Meta(ge=1)] = 100


class Settings(msgspec.Struct):
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    mode: Literal["fast", "safe"] = "safe"
    tags: list[str] = []
    limits: Limits = msgspec.field(default_factory=Limits)


SCHEMA: dict[str, Any] = msgspec.json.schema(Settings)


def test_a_conforming_document_has_no_problems() -> None:
    assert (
        check_config(SCHEMA, {"max_depth": 64, "mode": "fast", "tags": ["a"], "limits": {"steps": 5}}) == []
    )
    assert check_config(SCHEMA, {}) == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"max_depth": "deep"}, "'deep' is not of type 'integer' - at `$.max_depth`"),
        ({"max_depth": 0}, "0 is less than the minimum of 1 - at `$.max_depth`"),
        ({"mode": "slow"}, "'slow' is not one of ['fast', 'safe'] - at `$.mode`"),
        ({"tags": ["a", 2]}, "2 is not of type 'string' - at `$.tags[1]`"),
        ({"limits": {"steps": -1}}, "-1 is less than the minimum of 1 - at `$.limits.steps`"),
    ],
)
def test_each_problem_names_its_field(values: dict[str, Any], problem: str) -> None:
    assert check_config(SCHEMA, values) == [problem]


def test_an_unknown_field_is_named_even_when_the_struct_would_ignore_it() -> None:
    expected = (
        "unknown config field 'max_dept' (the fields are limits, max_depth, mode, tags) - at `$.max_dept`"
    )
    assert unknown_fields(SCHEMA, {"max_dept": 64}) == [expected]
    assert check_config(SCHEMA, {"max_dept": 64}) == [expected]


def test_a_strict_struct_reports_an_unknown_field_once() -> None:
    class Strict(msgspec.Struct, forbid_unknown_fields=True):
        a: int = 1

    assert check_config(msgspec.json.schema(Strict), {"b": 2}) == [
        "unknown config field 'b' (the fields are a) - at `$.b`"
    ]


def test_a_module_without_a_config_type_accepts_any_object() -> None:
    schema = msgspec.json.schema(dict[str, Any])
    assert unknown_fields(schema, {"anything": 1}) == []
    assert check_config(schema, {"anything": [1, {"x": None}]}) == []


def test_a_broken_recorded_schema_is_reported_not_raised() -> None:
    assert check_config({"type": 12}, {})[0].startswith("the module's recorded config schema is not valid")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["max_depth=64"], ({"max_depth": 64}, False)),
        (["mode=fast", "debug=true", "ratio=0.5"], ({"mode": "fast", "debug": True, "ratio": 0.5}, False)),
        (['name="64"', "empty=", "list=[1, 2]"], ({"name": "64", "empty": "", "list": [1, 2]}, False)),
        (["url=http://x/?a=b"], ({"url": "http://x/?a=b"}, False)),
        (['{"max_depth": 64, "mode": "safe"}'], ({"max_depth": 64, "mode": "safe"}, True)),
    ],
)
def test_assignments(args: list[str], expected: tuple[dict[str, Any], bool]) -> None:
    assert parse_assignments(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["max_depth"], "'max_depth' is not key=value"),
        (["=3"], "'=3' is not key=value"),
        (["{not json"], "not a JSON object"),
    ],
)
def test_unusable_assignments(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_assignments(args)
