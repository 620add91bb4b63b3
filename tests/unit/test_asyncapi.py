"""deploy/asyncapi.yaml is generated from the Structs, complete and current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.asyncapi import document, render

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_document_is_the_generated_one() -> None:
    committed = (REPO / "deploy/asyncapi.yaml").read_text()
    assert committed == render(), "regenerate: python -m corral.asyncapi > deploy/asyncapi.yaml"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_every_reference_resolves() -> None:
    doc = json.loads(render())
    for ref in _refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in target, f"{ref} does not resolve"
            target = target[part]


def test_the_wire_messages_are_described() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    assert schemas["Envelope"]["required"] == ["type"]
    assert set(schemas["Response"]["required"]) == {"type", "payload", "success", "timestamp"}
    assert "ErrorPayload" in schemas
    assert doc["channels"]["send"]["address"] == "{prefix}.send.{module}"
    assert doc["operations"]["heartbeat"].get("reply") is None
    assert "reply" in doc["operations"]["state_set"]
