"""Every subject, stream, bucket and queue-group name. Nothing else in corral spells one.

All subjects start with a prefix (`corral` by default, `CORRAL_PREFIX`) so several
systems can share one NATS account. Streams and buckets are named from the prefix
too, upper- or lower-cased the way NATS tooling shows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_PREFIX",
    "EVENT_OWNERS",
    "EVENT_SOURCES",
    "OUTCOMES_TOKEN",
    "SERVICES",
    "Subjects",
    "outcomes_subject",
    "validate_token",
]

DEFAULT_PREFIX: Final = "corral"

# The services `corral up` starts, in start order (stopped in reverse).
SERVICES: Final = ("state", "health", "scheduler", "orchestrator")

# Sources of events kept in the CORRAL_EVENTS stream (`<prefix>.evt.<source>.>`). Routed-message
# events (`<prefix>.evt.message.<type>`) are deliberately not among them: they are live only.
EVENT_SOURCES: Final = ("lifecycle", "breaker", "health", "resource", "task", "workflow", "config", "state")

# Which service publishes each kind of event: `corral events --source orchestrator` means these kinds.
EVENT_OWNERS: Final = {
    "lifecycle": "orchestrator", "breaker": "orchestrator", "config": "orchestrator",
    "health": "health", "resource": "health", "task": "scheduler", "workflow": "scheduler",
    "state": "state",
}  # fmt: skip

# A subject token a user may choose (module names, message types, service names).
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def validate_token(value: str, what: str) -> str:
    """Return `value` if it is usable as one subject token, else raise ValueError naming `what`."""
    if not value:
        raise ValueError(f"{what} is empty: it must be one subject token such as 'interpreter'")
    if not _TOKEN.match(value):
        bad = next(ch for ch in value if not _TOKEN.match(ch))
        raise ValueError(f"{what} {value!r} contains {bad!r}: use only letters, digits, '_' and '-'")
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject and resource names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        for token in self.prefix.split("."):
            validate_token(token, "subject prefix")

    # --- request/reply -------------------------------------------------------------------------
    def send(self, module: str) -> str:
        """The orchestrator's mediated call path to a module."""
        return f"{self.prefix}.send.{module}"

    @property
    def send_all(self) -> str:
        # `>` rather than `*` so a malformed subject with extra tokens still gets a VALIDATION reply.
        return f"{self.prefix}.send.>"

    def module(self, module: str, type_: str) -> str:
        """A module's own handler for one message type (answered by its queue group)."""
        return f"{self.prefix}.mod.{module}.{type_}"

    def modctl(self, module: str, verb: str) -> str:
        return f"{self.prefix}.modctl.{module}.{verb}"

    def service(self, service: str, verb: str) -> str:
        """`corral.orchestrator.status`, `corral.state.get`, ..."""
        return f"{self.prefix}.{service}.{verb}"

    # --- events and heartbeats -----------------------------------------------------------------
    def heartbeat(self, service: str, instance: str) -> str:
        return f"{self.prefix}.hb.{service}.{instance}"

    @property
    def heartbeats_all(self) -> str:
        return f"{self.prefix}.hb.>"

    def event(self, source: str, kind: str, *rest: str) -> str:
        return ".".join((self.prefix, "evt", source, kind, *rest))

    @property
    def events_all(self) -> str:
        return f"{self.prefix}.evt.>"

    @property
    def events_stream_subjects(self) -> list[str]:
        return [f"{self.prefix}.evt.{source}.>" for source in EVENT_SOURCES]

    def leader_event(self, lease: str) -> str:
        """Leadership gained or lost by a replica (`lifecycle` so CORRAL_EVENTS keeps it)."""
        return self.event("lifecycle", "leader", lease)

    def message_event(self, type_: str) -> str:
        """Live copies of routed messages of one type, for subscribers by type."""
        return f"{self.prefix}.evt.message.{type_}"

    def task_event(self, task_id: str, event: str) -> str:
        return f"{self.prefix}.task.{task_id}.{event}"

    def task_queue(self, priority: int, capability: str) -> str:
        """Where a queued task waits: one subject per priority level and route (see
        corral.scheduling.routing), stored in the CORRAL_TASKS work-queue stream."""
        return f"{self.prefix}.tasks.{priority}.{capability}"

    @property
    def task_queue_all(self) -> str:
        return f"{self.prefix}.tasks.*.*"

    def task_kick(self, priority: int, capability: str) -> str:
        """Core, no body: a task was queued on that level and route; idle workers look at once."""
        return f"{self.prefix}.tasks.kick.{priority}.{capability}"

    def task_kicks(self, capability: str) -> str:
        """Kicks of every level of one route."""
        return f"{self.prefix}.tasks.kick.*.{capability}"

    def task_events_of(self, kind: str) -> str:
        """One kind of event (`done`, `started`, ...) of every task."""
        return f"{self.prefix}.task.*.{kind}"

    def task_events(self, task_id: str) -> str:
        return f"{self.prefix}.task.{task_id}.>"

    def dead_letter(self, task_id: str) -> str:
        """The subject of a task's dead letter in the CORRAL_DLQ stream."""
        return f"{self.prefix}.dlq.{task_id}"

    @property
    def dead_letters_all(self) -> str:
        return f"{self.prefix}.dlq.*"

    def worker_heartbeat(self, instance: str) -> str:
        """A worker's registration (id, capabilities, load), republished every heartbeat."""
        return f"{self.prefix}.workers.hb.{instance}"

    @property
    def worker_heartbeats_all(self) -> str:
        return f"{self.prefix}.workers.hb.*"

    # --- queue groups --------------------------------------------------------------------------
    def queue_group(self, name: str) -> str:
        """Instances of one service or module share a queue group, so each request is served once."""
        return f"{self.prefix}.{name}"

    # --- JetStream resources -------------------------------------------------------------------
    def _upper(self, name: str) -> str:
        return f"{self.prefix.upper().replace('.', '_')}_{name}"

    def _lower(self, name: str) -> str:
        return f"{self.prefix.lower().replace('.', '_')}_{name}"

    @property
    def events_stream(self) -> str:
        return self._upper("EVENTS")

    @property
    def tasks_stream(self) -> str:
        return self._upper("TASKS")

    @property
    def dlq_stream(self) -> str:
        return self._upper("DLQ")

    @property
    def modules_bucket(self) -> str:
        return self._lower("modules")

    @property
    def breakers_bucket(self) -> str:
        return self._lower("breakers")

    @property
    def config_bucket(self) -> str:
        return self._lower("config")

    @property
    def leases_bucket(self) -> str:
        return self._lower("leases")

    @property
    def tasks_bucket(self) -> str:
        return self._lower("tasks")

    @property
    def workflows_bucket(self) -> str:
        return self._lower("workflows")

    @property
    def results_bucket(self) -> str:
        return self._lower("results")

    @property
    def recurring_bucket(self) -> str:
        """Recurring task schedules added through the API (corral.toml ones are not stored)."""
        return self._lower("recurring")

    @property
    def state_bucket(self) -> str:
        return self._lower("state")

    @property
    def snapshots_bucket(self) -> str:
        return self._lower("snapshots")


# The Services API (`nats micro`) control subjects are fixed by the NATS spec, not by our prefix.
SRV_PING: Final = "$SRV.PING"
SRV_INFO: Final = "$SRV.INFO"

# Direct reply (corral.runtime.direct): the orchestrator forwards with reply subjects
# `<its inbox>.<token>`, and takes outcome reports on `<its inbox>.outcomes`. The module
# derives the second from the first, so the forward need not carry it.
OUTCOMES_TOKEN: Final = "outcomes"


def outcomes_subject(forward_reply: str) -> str:
    """Where a module reports the outcome of a call forwarded with reply subject `forward_reply`."""
    return forward_reply.rpartition(".")[0] + "." + OUTCOMES_TOKEN


SRV_STATS: Final = "$SRV.STATS"
