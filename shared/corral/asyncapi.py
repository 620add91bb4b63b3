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

from corral.protocol import Envelope, ErrorPayload, Heartbeat, ModuleStatus, Response

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
    from corral.live_config import ConfigSchema
    from corral.orchestrator.breakers import BreakerEvent
    from corral.orchestrator.config_rollout import ConfigChange, ConfigGet, ConfigRollback, ConfigSet
    from corral.orchestrator.leader import LeaderEvent
    from corral.orchestrator.messages import (
        Deregister,
        HistoryRequest,
        ModuleRef,
        Registration,
        StartSystem,
        StopModule,
        StopSystem,
    )
    from corral.orchestrator.service import BreakerReset, Subscribe
    from corral.orchestrator.states import LifecycleAlert, LifecycleEvent
    from corral.scheduler.recurring_api import RecurringAdd, RecurringName
    from corral.scheduler.recurring_runner import TickEvent
    from corral.scheduling import messages as sched
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
    scheduler_verbs = [
        ("task_submit", "submit", sched.SubmitRequest, "Queue a task; the reply carries its id."),
        ("task_submit_many", "submit_many", sched.SubmitManyRequest, "Queue up to 1000 tasks at once."),
        ("task_get", "get", sched.TaskIdRequest, "A task's record."),
        ("task_cancel", "cancel", sched.TaskIdRequest, "Cancel a task."),
        ("task_list", "list", sched.ListRequest, "Task records, newest first."),
        ("dlq_list", "dlq.list", sched.DlqListRequest, "Dead letters, oldest first."),
        ("dlq_show", "dlq.show", sched.DlqIdRequest, "One dead letter."),
        ("dlq_retry", "dlq.retry", sched.DlqIdRequest, "Queue a dead-lettered task again."),
        ("dlq_purge", "dlq.purge", sched.DlqPurgeRequest, "Delete one dead letter, or all."),
        ("recurring_add", "recurring.add", RecurringAdd, "Store a recurring task (interval or cron)."),
        ("recurring_list", "recurring.list", None, "Every recurring task, its next tick and counts."),
        ("recurring_remove", "recurring.remove", RecurringName, "Remove a recurring task added by API."),
    ]
    scheduler = [
        *(
            Channel(op, f"{{prefix}}.scheduler.{verb}", text, struct)
            for op, verb, struct, text in scheduler_verbs
        ),
        Channel(
            "task_queue",
            "{prefix}.tasks.{priority}.{route}",
            "A queued task (stream CORRAL_TASKS, work queue); workers pull it.",
            sched.TaskSpec,
            None,
            "publish",
        ),
        Channel(
            "task_transition",
            "{prefix}.task.{id}.{event}",
            "started, retry, done, failed, cancelled (core; the result itself is in KV).",
            sched.TaskDone,
            None,
            "publish",
        ),
        Channel(
            "task_progress",
            "{prefix}.task.{id}.progress",
            "A progress delta; `.snapshot` carries everything so far every N deltas.",
            sched.TaskProgress,
            None,
            "publish",
        ),
        Channel(
            "task_lifecycle",
            "{prefix}.evt.task.{kind}",
            "retrying, failed, cancelled, dlq_retried (stream CORRAL_EVENTS).",
            sched.TaskDone,
            None,
            "publish",
        ),
        Channel(
            "recurring_tick",
            "{prefix}.evt.task.recurring.{name}",
            "What one scheduler replica did with one tick of a recurring task (stream CORRAL_EVENTS).",
            TickEvent,
            None,
            "publish",
        ),
        Channel(
            "dead_letter",
            "{prefix}.dlq.{id}",
            "A task whose every attempt failed (stream CORRAL_DLQ).",
            sched.DeadLetter,
            None,
            "publish",
        ),
        Channel(
            "worker_heartbeat",
            "{prefix}.workers.hb.{instance}",
            "A worker's id, capabilities and load.",
            sched.WorkerInfo,
            None,
            "publish",
        ),
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
            "An SDK module asks to be told ready, and/or a descriptor joins the registry.",
            Registration,
        ),
        *(
            Channel(op, f"{{prefix}}.orchestrator.{verb}", text, struct)
            for op, verb, struct, text in (
                ("deregister", "deregister", Deregister, "Remove a stopped module nothing depends on."),
                ("start_system", "start_system", StartSystem, "Start every module in dependency order."),
                ("stop_system", "stop_system", StopSystem, "Stop every module in reverse order."),
                ("start", "start", ModuleRef, "Start one module (its dependencies must be running)."),
                ("stop", "stop", StopModule, "Stop one module (cascade: its dependents first)."),
                ("restart", "restart", ModuleRef, "Stop and start one module."),
                ("module", "module", ModuleRef, "One module's record and recent recoveries."),
                ("recovery_history", "recovery.history", HistoryRequest, "A module's recovery history."),
                ("registry", "registry", None, "Every module's record."),
            )
        ),
        Channel(
            "lifecycle_event",
            "{prefix}.evt.lifecycle.{module}",
            "A module's state change.",
            LifecycleEvent,
            None,
            "publish",
        ),
        Channel(
            "lifecycle_alert",
            "{prefix}.evt.lifecycle.{module}.alert",
            "A module waits for an operator.",
            LifecycleAlert,
            None,
            "publish",
        ),
        Channel(
            "breaker_reset", "{prefix}.orchestrator.breaker.reset", "Close a module's breaker.", BreakerReset
        ),
        Channel(
            "subscribe", "{prefix}.orchestrator.subscribe", "Lease routed messages of a type.", Subscribe
        ),
        *(Channel(op, f"{{prefix}}.state.{verb}", text, struct) for op, verb, struct, text in verbs),
        *(
            Channel(f"config_{verb}", f"{{prefix}}.orchestrator.config.{verb}", text, struct)
            for verb, struct, text in (
                ("get", ConfigGet, "A module's stored config, schema and instances."),
                ("set", ConfigSet, "Validate, apply in every running instance, then store a config."),
                ("history", ConfigGet, "The kept versions of a module's config."),
                ("rollback", ConfigRollback, "Apply and store an earlier version again."),
            )
        ),
        Channel(
            "module_config_schema",
            "{prefix}.modctl.{module}.schema",
            "One reply per instance: its config JSON Schema.",
            None,
            ConfigSchema,
        ),
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
            "config_event",
            "{prefix}.evt.config.{module}",
            "A committed config change.",
            ConfigChange,
            None,
            "publish",
        ),
        Channel(
            "leader_event",
            "{prefix}.evt.lifecycle.leader.{lease}",
            "A replica gained or lost a lease.",
            LeaderEvent,
            None,
            "publish",
        ),
        Channel(
            "message_event",
            "{prefix}.evt.message.{type}",
            "Routed messages, while leased.",
            Envelope,
            None,
            "publish",
        ),
        *scheduler,
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
