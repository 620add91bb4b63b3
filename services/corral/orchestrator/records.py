"""What the orchestrator keeps per module in KV `corral_modules`: the descriptor, the lifecycle
state, the instances it launched and the recovery history. Every replica, the CLI and the
dashboard read the same records; only the leader writes them."""

from __future__ import annotations

import msgspec

from corral.config import ModuleConfig
from corral.orchestrator.states import ModuleState, StateHolder

__all__ = ["HISTORY_KEEP", "InstanceRecord", "ModuleRecord", "RecoveryEntry", "history_key", "module_key"]

HISTORY_KEEP = 100  # recovery entries kept per module


def module_key(name: str) -> str:
    return f"module.{name}"


def history_key(name: str) -> str:
    return f"history.{name}"


class InstanceRecord(msgspec.Struct, kw_only=True):
    instance: str  # the id it registers under (CORRAL_INSTANCE)
    pid: int = 0  # 0: not a process of ours (external)
    host: str = ""
    create_time: float = 0.0  # the process's start time, so a reused pid is not mistaken for it
    started: float = 0.0  # wall-clock time of the launch
    ready: bool = False


class RecoveryEntry(msgspec.Struct, kw_only=True):
    time: float  # wall clock, when the failure was seen
    failure: str  # what failed, e.g. "instance worker-1a2b exited with code -9"
    instance: str
    action: str  # the strategy applied, "give_up" or "manual"
    attempt: int
    max_attempts: int
    delay: float
    outcome: str = "pending"  # recovered in 1.2s | failed: ... | gave up | waiting for an operator
    finished: float = 0.0


class ModuleRecord(msgspec.Struct, kw_only=True):
    name: str
    descriptor: ModuleConfig
    source: str = "config"  # "config" (corral.toml) or "runtime" (registered over NATS)
    argv: list[str] = []  # resolved command (process and wasm)
    cwd: str = ""
    status: StateHolder = msgspec.field(default_factory=StateHolder)
    desired: str = "stopped"  # "running" or "stopped": what a leader taking over restores
    instances: list[InstanceRecord] = []
    leader: str = ""  # the replica that wrote this version
    updated: float = 0.0

    @property
    def state(self) -> ModuleState:
        return self.status.state

    @property
    def pids(self) -> list[int]:
        return [i.pid for i in self.instances if i.pid]
