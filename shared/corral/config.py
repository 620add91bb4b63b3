"""`corral.toml`: the system file. Decoded into Structs, so a typo is an error with a path."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from corral import graph
from corral.errors import ConfigError
from corral.policy import BreakerConfig, BulkheadConfig, CallPolicy
from corral.protocol import parse_priority
from corral.subjects import DEFAULT_PREFIX, SERVICES, validate_token

__all__ = [
    "STRATEGIES",
    "ModuleConfig",
    "NatsConfig",
    "RecurringConfig",
    "ResourceLimits",
    "RestartPolicy",
    "SchedulerConfig",
    "ServiceConfig",
    "SystemConfig",
    "load_config",
    "parse_duration",
    "start_layers",
]

T = TypeVar("T")
_DURATION = re.compile(r"^\d+(ms|s|m|h)$")
Port = Annotated[int, msgspec.Meta(ge=-1, le=65535)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class NatsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[nats]`: an existing server (`url`) or the embedded one (everything else)."""

    url: str = ""  # empty: start the embedded nats-server
    port: Port = 4222  # the embedded server's port; another free one is picked if it is taken
    store_dir: str = ".corral/nats"
    # "default" (lazy fsync, the server's default), "always" (fsync before every ack) or a duration.
    sync_interval: str = "default"
    max_payload: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        # msgspec appends "- at `$.nats`"; the message names the field itself.
        if self.sync_interval not in ("default", "always") and not _DURATION.match(self.sync_interval):
            raise ValueError(
                "sync_interval must be 'default', 'always' or a duration like '10s', "
                f"got {self.sync_interval!r}"
            )


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[services.<name>]`: one of corral's own services."""

    enabled: bool = True
    metrics_port: Port = 0  # 0: any free port
    env: dict[str, str] = {}


class ResourceLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[modules.<name>.limits]`: per-instance figures the health service holds a module to
    (unset: no limit). A sustained violation throttles the module, then makes it unhealthy."""

    cpu_percent: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory_mb: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # A Python process with a NATS connection needs a dozen descriptors before it does anything.
    open_files: Annotated[int, msgspec.Meta(ge=16, le=1_048_576)] | None = None
    threads: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None

    def exceeded(self, cpu_percent: float, rss_bytes: int, open_fds: int, threads: int) -> list[str]:
        """The names of the limits these figures are over."""
        over = []
        if self.cpu_percent is not None and cpu_percent > self.cpu_percent:
            over.append("cpu_percent")
        if self.memory_mb is not None and rss_bytes > self.memory_mb * 2**20:
            over.append("memory_mb")
        if self.open_files is not None and open_fds > self.open_files:
            over.append("open_files")
        if self.threads is not None and threads > self.threads:
            over.append("threads")
        return over


Strategy = Literal["restart", "restart_with_reset", "degraded", "system_restart", "manual"]
STRATEGIES: tuple[str, ...] = ("restart", "restart_with_reset", "degraded", "system_restart", "manual")


class RestartPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[modules.<name>.restart]`: what the orchestrator does when the module fails.

    `max_attempts` recoveries within `window` seconds is the restart intensity; one more failure
    in the window escalates to the next strategy of `escalation`, and past the last one the
    module is marked failed and an alert is published.
    """

    strategy: Strategy = "restart"
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    window: PositiveSeconds = 60.0
    backoff_initial: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    backoff_multiplier: Annotated[float, msgspec.Meta(ge=1, le=100)] = 2.0
    backoff_max: PositiveSeconds = 30.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2  # up to this share taken off a delay
    escalation: list[Strategy] = []

    def __post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max:g}) is below backoff_initial ({self.backoff_initial:g})"
            )
        chain = [self.strategy, *self.escalation]
        if len(set(chain)) != len(chain):
            raise ValueError(f"escalation repeats a strategy: {' -> '.join(chain)}")
        if "manual" in chain[:-1]:
            raise ValueError("manual waits for an operator, so it can only be the last strategy")

    @property
    def chain(self) -> list[str]:
        return [self.strategy, *self.escalation]


_DURATION_PARTS = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: float | str, field: str) -> float:
    """Seconds from a number or a duration such as "90s", "5m", "1h30m", "1d"; ValueError naming `field`."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().replace(" ", "")
        parts = _DURATION_PARTS.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(
                f"{field} {value!r} is not a duration: use seconds (30) or a string like '30s', '5m', "
                "'1h30m', '1d'"
            )
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"{field} must be more than 0 seconds, got {value!r}")
    return seconds


Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]


class RecurringConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[scheduler.recurring.<name>]`: a task submitted on an interval or a cron expression.

    Ticks are computed from the schedule alone (intervals are aligned to the Unix epoch), so
    every scheduler replica computes the same ones; each tick is submitted with the idempotency
    key `recurring:<name>:<tick>`, so it runs once however many replicas submit it.
    """

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]
    payload: Any = {}
    every: float | str | None = None  # seconds, or "30s", "5m", "1h", "1d"
    cron: str | None = None  # 5 fields (minute ... weekday), or 6 with seconds first
    timezone: str = "UTC"  # the zone cron fields are read in
    priority: int | str = 2
    capabilities: list[str] = []
    # Skip a tick (and count it) while the machine is over either figure (psutil); unset: never.
    max_cpu_percent: Percent | None = None
    max_memory_percent: Percent | None = None
    # A tick up to this old is still submitted (after a restart or an outage); older ones are missed.
    grace: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    enabled: bool = True

    def __post_init__(self) -> None:
        # msgspec appends "- at `$.<path>`" to these messages; each names its field.
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of every (an interval) and cron (an expression)")
        if self.every is not None:
            self.every = _at(_interval, self.every, "every")
        zone = _at(_zone, self.timezone, "timezone")
        if self.cron is not None:
            _at(_check_cron, self.cron, zone, field="cron")
        self.priority = int(parse_priority(self.priority))
        for n, capability in enumerate(self.capabilities):
            _at(validate_token, capability, "capability", field=f"capabilities[{n}]")

    @property
    def interval(self) -> float | None:
        return None if self.every is None else float(self.every)


def _at(check: Callable[..., T], *args: Any, field: str | None = None) -> T:
    """`check(*args)`; a ValueError it raises gets `field` (default: the last arg) as its path."""
    try:
        return check(*args)
    except ValueError as exc:
        raise ValueError(f"{exc} - at `$.{field or args[-1]}`") from None


def _interval(value: float | str, field: str) -> float:
    # Ticks at least a second apart keep `recurring:<name>:<whole seconds>` one key per tick.
    seconds = parse_duration(value, field)
    if seconds < 1:
        raise ValueError(f"{field} must be at least 1 second, got {value!r}")
    return seconds


def _zone(name: str, field: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{field} {name!r} is not an IANA time zone such as 'UTC' or 'Europe/Paris'"
        ) from None


def _check_cron(expression: str, zone: tzinfo) -> None:
    try:
        CronSim(expression, datetime.now(zone))
    except CronSimError as exc:
        raise ValueError(
            f"cron {expression!r} is not a cron expression ({exc}): use 5 fields "
            "'minute hour day month weekday' such as '*/5 * * * *', or 6 with seconds first"
        ) from None


class SchedulerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[scheduler]`: the task scheduler's part of corral.toml."""

    recurring: dict[str, RecurringConfig] = {}


class ModuleConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[modules.<name>]`: a module `corral up` starts (`process`, `wasm`) or only expects (`external`)."""

    kind: Literal["process", "external", "wasm"] = "process"
    # argv; "{python}" is this Python, relative paths are relative to corral.toml's folder.
    command: list[str] = []
    # wasm: the .wasm or .wat file (relative to corral.toml's folder), run by the wasm adapter,
    # and its [modules.<name>.sandbox], which the adapter checks (corral.adapters.wasm.sandbox).
    file: str = ""
    sandbox: dict[str, Any] = {}
    env: dict[str, str] = {}
    cwd: str | None = None
    depends_on: list[str] = []
    required: bool = True
    startup_timeout: PositiveSeconds = 30.0
    stop_timeout: PositiveSeconds = 10.0
    metrics_port: Port = 0
    config: dict[str, Any] = {}
    instances: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # process and wasm: how many to launch
    critical: bool = False  # may use the system_restart strategy
    restart: RestartPolicy = msgspec.field(default_factory=RestartPolicy)
    # Failure detection: heartbeats missing for unhealthy_threshold intervals is a failure.
    heartbeat_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    # How the orchestrator protects callers from this module (see corral.policy).
    timeout: PositiveSeconds = 30.0
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    bulkhead: BulkheadConfig = msgspec.field(default_factory=BulkheadConfig)
    limits: ResourceLimits = msgspec.field(default_factory=ResourceLimits)

    def policy(self) -> CallPolicy:
        return CallPolicy(timeout=self.timeout, breaker=self.breaker, bulkhead=self.bulkhead)


class SystemConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    prefix: str = DEFAULT_PREFIX
    log_dir: str = ".corral/logs"
    log_max_mb: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # a module's log is rotated past this size
    log_backups: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3  # rotated files kept (<name>.log.1 ...)
    grace_period: PositiveSeconds = 10.0  # how long `corral up` waits for each process to drain
    startup_timeout: PositiveSeconds = 30.0  # per service
    # The orchestrator's start_system: modules whose dependencies are running start together
    # (true) or one at a time, module_start_delay seconds apart (false).
    parallel_startup: bool = True
    module_start_delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    services: dict[str, ServiceConfig] = {}
    modules: dict[str, ModuleConfig] = {}
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    root: str = "."  # the folder of corral.toml; set by load_config, not read from the file
    source: str = ""  # the path of corral.toml; set by load_config

    def service(self, name: str) -> ServiceConfig:
        return self.services.get(name) or ServiceConfig()

    def resolve(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else Path(self.root) / candidate

    def _wasm_adapter_argv(self, name: str, module: ModuleConfig) -> list[str]:
        """One wasm adapter process per module. It reads the module's file and sandbox from
        corral.toml and exits with code 2 naming a bad file or sandbox field."""
        adapter = [sys.executable, "-m", "corral.adapters.wasm"]
        if self.source and self.modules.get(name) is module:
            return [*adapter, "--config", self.source, "--only", name]
        # built in code or registered at run time, not read from the file
        sandbox = msgspec.json.encode(module.sandbox).decode()
        return [*adapter, "--module", f"{name}={self.resolve(module.file)}", "--sandbox", f"{name}={sandbox}"]

    def module_argv(self, name: str, module: ModuleConfig | None = None) -> list[str]:
        """The resolved command of a module of this file (or of `module`, registered at run time)."""
        module = module or self.modules[name]
        if module.kind == "wasm":
            return self._wasm_adapter_argv(name, module)
        argv = []
        for arg in module.command:
            arg = arg.replace("{python}", sys.executable)
            # A relative path that exists next to corral.toml is made absolute, so cwd does not matter.
            if arg and not Path(arg).is_absolute() and (Path(self.root) / arg).exists():
                arg = str(Path(self.root) / arg)
            argv.append(arg)
        return argv


def load_config(path: str | Path) -> SystemConfig:
    """Read and validate corral.toml; raise ConfigError naming the file and the field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        config = _decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    config.root = str(path.resolve().parent)
    config.source = str(path.resolve())
    try:
        validate(config)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config


def _decode(raw: bytes) -> SystemConfig:
    """Decode corral.toml. Tables keyed by name are converted one by one, because msgspec
    reports a dict entry's path as `$.modules[...]`; we want `$.modules.<name>.<field>`."""
    document = msgspec.toml.decode(raw)
    if not isinstance(document, dict):
        raise msgspec.ValidationError("expected a TOML document")
    tables: dict[str, dict[str, Any]] = {}
    for section, kind in (("modules", ModuleConfig), ("services", ServiceConfig)):
        entries = document.pop(section, {})
        if not isinstance(entries, dict):
            raise msgspec.ValidationError(f"Expected a table of {section} - at `$.{section}`")
        tables[section] = {
            name: _convert(body, kind, f"$.{section}.{name}") for name, body in entries.items()
        }
    recurring = _recurring_tables(document)
    config = msgspec.convert(document, SystemConfig)
    config.modules = tables["modules"]
    config.services = tables["services"]
    config.scheduler.recurring = recurring
    return config


def _recurring_tables(document: dict[str, Any]) -> dict[str, RecurringConfig]:
    """`[scheduler.recurring.<name>]`, converted one by one for `$.scheduler.recurring.<name>` paths."""
    scheduler = document.get("scheduler", {})
    if not isinstance(scheduler, dict):
        raise msgspec.ValidationError("Expected a table - at `$.scheduler`")
    entries = scheduler.pop("recurring", {})
    if not isinstance(entries, dict):
        raise msgspec.ValidationError("Expected a table of recurring tasks - at `$.scheduler.recurring`")
    return {
        name: _convert(body, RecurringConfig, f"$.scheduler.recurring.{name}")
        for name, body in entries.items()
    }


def _convert(body: Any, kind: type[Any], path: str) -> Any:
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$" in message:
            head, _, tail = message.rpartition(" - at `$")
            raise msgspec.ValidationError(f"{head} - at `{path}{tail}") from None
        raise msgspec.ValidationError(f"{message} - at `{path}`") from None


def validate(config: SystemConfig) -> None:
    for token in config.prefix.split("."):
        validate_token(token, "prefix")
    for name in config.services:
        if name not in SERVICES:
            raise ValueError(
                f"unknown service [services.{name}]: corral's services are {', '.join(SERVICES)}"
            )
    for name, module in config.modules.items():
        validate_module(name, module)
    for name in config.scheduler.recurring:
        validate_token(name, f"recurring task name [scheduler.recurring.{name}]")
    start_layers(config.modules)


def validate_module(name: str, module: ModuleConfig) -> None:
    """Checks of one module's name and fields that the types alone do not make."""
    validate_token(name, "module name")
    if name in SERVICES:
        raise ValueError(f"module {name!r} has the name of a corral service; choose another name")
    if module.kind == "process" and not module.command:
        raise ValueError(f"module {name!r} is a process but has no command - at `$.modules.{name}.command`")
    if module.kind == "wasm" and not module.file:
        raise ValueError(f"module {name!r} is a wasm module but has no file - at `$.modules.{name}.file`")
    if module.kind != "wasm" and (module.file or module.sandbox):
        raise ValueError(
            f'module {name!r}: file and sandbox are for kind = "wasm" - at `$.modules.{name}.kind`'
        )
    if "system_restart" in module.restart.chain and not module.critical:
        raise ValueError(
            f"module {name!r}: the system_restart strategy is for modules marked critical = true "
            f"- at `$.modules.{name}.restart.strategy`"
        )
    if module.metrics_port > 0 and module.instances > 1:
        raise ValueError(
            f"module {name!r}: {module.instances} instances cannot share metrics_port {module.metrics_port}; "
            f"use 0 (any free port) - at `$.modules.{name}.metrics_port`"
        )
    if module.kind == "external" and module.command:
        raise ValueError(
            f"module {name!r} is external (started by someone else) but has a command "
            f"- at `$.modules.{name}.command`"
        )


def start_layers(modules: dict[str, ModuleConfig]) -> list[list[str]]:
    """Modules grouped by dependency depth: every module comes after all it depends on.

    Raises ValueError for an unknown dependency or a cycle, naming it (`a -> b -> a`).
    """
    return graph.start_layers({name: m.depends_on for name, m in modules.items()})
