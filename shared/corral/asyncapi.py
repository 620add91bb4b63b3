"""The AsyncAPI document of corral's subjects, generated from the msgspec Structs.

`python -m corral.asyncapi > deploy/asyncapi.yaml` writes it (JSON, which is YAML); a test
checks the committed file equals a fresh generation, so it is never edited by hand and never
stale. Message schemas come from `msgspec.json.schema_components`, the same types the services
decode with.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from typing import Any

import msgspec

from corral.protocol import Envelope, ErrorPayload, Heartbeat, ModuleRegistration, ModuleStatus, Response

__all__ = ["Channel", "channels", "document"]


@dataclass(frozen=True)
class Channel:
    name: str  # operation id
    address: str  # subject, with {parameters}
    description: str
    request: Any  # a Struct type, or None for "any JSON" / empty
    reply: Any = Response
    kind: str = "request"  # request (send + reply) | publish


def channels() -> list[Channel]:
    # Imported here: the services import corral's shared modules, not the other way round.
    from corral.orchestrator.breakers import BreakerEvent
    from corral.orchestrator.service import BreakerReset, Subscribe
    from corral.state import messages as state
    from corral.state.changes import Change

    verbs = [
        ("state_set", "set", state.SetRequest, "Write a key (compare-and-set with expected_revision)."),
        ("state_get", "get", state.KeyRequest, "Read a key."),
        ("state_get_many", "get_many", state.GetManyRequest, "Read several keys."),
        ("state_keys", "keys", state.KeysRequest, "Keys matching a NATS wildcard pattern."),
        ("state_delete", "delete", state.DeleteRequest, "Delete a key."),
        ("state_history", "history", state.KeyRequest, "Past versions of a key."),
        ("state_restore", "restore", state.RestoreRequest, "Write an old version back."),
        ("state_snapshot_create", "snapshot.create", state.SnapshotCreateRequest, "Capture every key."),
        (
            "state_snapshot_restore",
            "snapshot.restore",
            state.SnapshotIdRequest,
            "Make the store equal a snapshot.",
        ),
        ("state_snapshot_delete", "snapshot.delete", state.SnapshotIdRequest, "Delete a snapshot."),
    ]
    return [
        Channel("send", "{prefix}.send.{module}", "Call a module through the orchestrator.", Envelope),
        Channel(
            "module_call", "{prefix}.mod.{module}.{type}", "A module's handler; body = the payload.", None
        ),
        Channel(
            "module_control", "{prefix}.modctl.{module}.{verb}", "Control verbs of every instance.", None
        ),
        Channel(
            "module_status", "{prefix}.modctl.{module}.status", "One reply per instance.", None, ModuleStatus
        ),
        Channel(
            "register",
            "{prefix}.orchestrator.register",
            "An SDK module asks to be told ready.",
            ModuleRegistration,
        ),
        Channel(
            "breaker_reset", "{prefix}.orchestrator.breaker.reset", "Close a module's breaker.", BreakerReset
        ),
        Channel(
            "subscribe", "{prefix}.orchestrator.subscribe", "Lease routed messages of a type.", Subscribe
        ),
        *(Channel(op, f"{{prefix}}.state.{verb}", text, struct) for op, verb, struct, text in verbs),
        Channel(
            "heartbeat",
            "{prefix}.hb.{service}.{instance}",
            "Liveness and psutil figures.",
            Heartbeat,
            None,
            "publish",
        ),
        Channel(
            "breaker_event",
            "{prefix}.evt.breaker.{module}",
            "A breaker transition.",
            BreakerEvent,
            None,
            "publish",
        ),
        Channel(
            "state_changed", "{prefix}.evt.state.changed", "Every state change.", Change, None, "publish"
        ),
        Channel(
            "message_event",
            "{prefix}.evt.message.{type}",
            "Routed messages, while leased.",
            Envelope,
            None,
            "publish",
        ),
    ]


def document() -> dict[str, Any]:
    chans = channels()
    # ErrorPayload is what an error Response carries; Response.payload itself is typed Any.
    used = {t for c in chans for t in (c.request, c.reply) if t is not None} | {ErrorPayload}
    types = sorted(used, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    for schema in components.values():
        # msgspec < 0.20 keeps a docstring's indentation, later releases clean it: same text either way.
        if isinstance(schema.get("description"), str):
            schema["description"] = inspect.cleandoc(schema["description"])
    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "corral",
            "version": "0.1.0",
            "description": "Subjects of a corral system. Bodies are JSON (msgpack with "
            "`Content-Type: application/msgpack`); every reply is a Response.",
        },
        "defaultContentType": "application/json",
        "channels": {},
        "operations": {},
        "components": {"schemas": components, "messages": {}},
    }
    for channel in chans:
        _add(doc, channel)
    return doc


def _message_ref(doc: dict[str, Any], struct: Any) -> dict[str, str]:
    name = struct.__name__ if struct is not None else "AnyJson"
    if name not in doc["components"]["messages"]:
        payload = {"$ref": f"#/components/schemas/{name}"} if struct is not None else {}
        doc["components"]["messages"][name] = {"name": name, "payload": payload}
    return {"$ref": f"#/components/messages/{name}"}


def _add(doc: dict[str, Any], channel: Channel) -> None:
    params = [part[1:-1] for part in channel.address.split(".") if part.startswith("{")]
    messages = {"request": _message_ref(doc, channel.request)}
    if channel.kind == "request":
        messages["reply"] = _message_ref(doc, channel.reply)
    doc["channels"][channel.name] = {
        "address": channel.address,
        "description": channel.description,
        "parameters": {p: {"description": f"the {p} token"} for p in params},
        "messages": messages,
    }
    operation: dict[str, Any] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{channel.name}"},
        "messages": [{"$ref": f"#/channels/{channel.name}/messages/request"}],
    }
    if channel.kind == "request":
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{channel.name}"},
            "messages": [{"$ref": f"#/channels/{channel.name}/messages/reply"}],
        }
    doc["operations"][channel.name] = operation


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
