"""Live configuration: `<prefix>.orchestrator.config.get|set|history|rollback`.

A change is applied before it is committed:

1. The module's instances are asked for their config schema (the `schema` control verb, which
   every instance answers). An unknown field is refused here.
2. The new document goes to every instance with the `config` control verb. Each instance
   decodes it into its `@module.on_config` type, so a wrong type is refused with msgspec's
   field path, and runs its hooks, any of which may refuse it.
3. Only when every instance has accepted it is the document committed to KV `corral_config`,
   as the next version (compare-and-set on the key's revision). Then
   `<prefix>.evt.config.<module>` is published.

If any instance refuses, or does not answer in time, the instances that did accept are sent
their previous config again, and nothing is committed: the old config stays in KV and in the
module. If the commit loses a race with another replica, the instances get the committed
version and the caller gets CONFLICT.

When no instance runs, the document is checked against the schema the module last recorded
(SDK instances record it when they start), committed, and applied when the module starts. A
module that has never recorded a schema cannot be configured until it has run once: the
orchestrator has nothing to check the change against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Annotated, Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from corral.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from corral.live_config import CONFIG_VERSION_HEADER, ConfigDocument, ConfigSchema
from corral.orchestrator.config_schema import check_config, unknown_fields
from corral.orchestrator.config_store import ConfigStore
from corral.subjects import Subjects

__all__ = ["ConfigChange", "ConfigGet", "ConfigRollback", "ConfigRollout", "ConfigSet", "ConfigView"]

log = logging.getLogger("corral.orchestrator.config")

ModuleName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]

SCHEMA_WAIT = 0.3  # seconds to collect the `schema` replies of a module's instances
APPLY_TIMEOUT = 5.0  # seconds for every instance to accept or refuse a config


class ConfigGet(msgspec.Struct, forbid_unknown_fields=True):
    module: ModuleName


class ConfigSet(msgspec.Struct, forbid_unknown_fields=True):
    module: ModuleName
    values: dict[str, Any]
    replace: bool = False  # False: `values` are merged over the current config; True: they are it
    expected_version: Annotated[int, msgspec.Meta(ge=0)] | None = None  # CONFLICT if not current


class ConfigRollback(msgspec.Struct, forbid_unknown_fields=True):
    module: ModuleName
    version: Annotated[int, msgspec.Meta(ge=1)]


class InstanceConfig(msgspec.Struct):
    instance: str
    config_version: int
    config: Any


class ConfigView(msgspec.Struct, kw_only=True):
    """The reply of `config.get`: the stored config, its schema, and what each instance runs."""

    module: str
    version: int  # 0: never configured (the module runs its defaults)
    values: dict[str, Any]
    source: str
    time: float | None
    note: str
    schema: dict[str, Any] | None  # None: the module has never recorded one
    instances: list[InstanceConfig]


class ConfigChange(msgspec.Struct, kw_only=True):
    """The reply of `config.set` and `config.rollback`, and the `<prefix>.evt.config.<module>` event."""

    module: str
    version: int
    previous_version: int
    values: dict[str, Any]
    changed: list[str]  # top-level fields whose value differs from the previous version
    source: str
    note: str
    applied_to: list[str]  # instances running it now (empty: applied when the module starts)
    time: float


class _Reply(msgspec.Struct):
    success: bool
    payload: msgspec.Raw = msgspec.Raw(b"null")


class _ErrorPayload(msgspec.Struct):
    code: str = ""
    errors: list[str] = []


_encode = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(_Reply).decode
_decode_schema = msgspec.json.Decoder(ConfigSchema).decode
_decode_error = msgspec.json.Decoder(_ErrorPayload).decode


class ConfigRollout:
    def __init__(
        self, nc: Client, js: JetStreamContext, subjects: Subjects, *, apply_timeout: float = APPLY_TIMEOUT
    ) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects
        self.apply_timeout = apply_timeout
        self.store = ConfigStore(js, subjects)
        # One change at a time per module in this replica; between replicas the CAS decides.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def start(self) -> None:
        await self.store.start()

    async def seed(self, initial: dict[str, dict[str, Any]]) -> None:
        """Store corral.toml's `[modules.X.config]` as version 1 of each module that has none,
        and apply it to instances already running (in Kubernetes, modules may start first)."""
        for module, values in initial.items():
            if not values:
                continue
            async with self._locks[module]:
                document = await self.store.seed(module, values)
                if document is None:
                    continue
                log.info("config of %s seeded from corral.toml", module)
                instances = await self._instances(module)
                if instances:
                    _, refusals, _ = await self._push(module, values, 1, len(instances))
                    for refusal in refusals:
                        log.warning("module %s did not take its corral.toml config: %s", module, refusal)
                await self._publish(self._change(document, None, [i.instance for i in instances]))

    # --- endpoints -----------------------------------------------------------------------------
    async def get(self, req: ConfigGet) -> ConfigView:
        (_, document), record, instances = await asyncio.gather(
            self.store.current(req.module), self.store.schema(req.module), self._instances(req.module)
        )
        schema = instances[0].schema if instances else (record.schema if record else None)
        if document is None and schema is None:
            raise NotFoundError(
                f"module {req.module!r} has no config: it was never configured, and no instance "
                "of it has run to declare a config schema"
            )
        running = [InstanceConfig(i.instance, i.config_version, i.config) for i in instances]
        if document is None:
            defaults = instances[0].config if instances and isinstance(instances[0].config, dict) else {}
            return ConfigView(
                module=req.module, version=0, values=defaults, source="defaults", time=None, note="",
                schema=schema, instances=running,
            )  # fmt: skip
        return ConfigView(
            module=req.module, version=document.version, values=document.values, source=document.source,
            time=document.time, note=document.note, schema=schema, instances=running,
        )  # fmt: skip

    async def set(self, req: ConfigSet) -> ConfigChange:
        async with self._locks[req.module]:
            revision, current = await self.store.current(req.module)
            version = current.version if current else 0
            if req.expected_version is not None and req.expected_version != version:
                raise ConflictError(
                    f"the config of {req.module!r} is at version {version}, not {req.expected_version}"
                )
            values = dict(req.values) if req.replace or current is None else {**current.values, **req.values}
            return await self._roll_out(req.module, values, revision, current, "set", "")

    async def history(self, req: ConfigGet) -> list[ConfigDocument]:
        versions = await self.store.history(req.module)
        if not versions:
            raise NotFoundError(f"module {req.module!r} has no config history: it was never configured")
        return versions

    async def rollback(self, req: ConfigRollback) -> ConfigChange:
        async with self._locks[req.module]:
            revision, current = await self.store.current(req.module)
            target = await self.store.version(req.module, req.version)
            if target is None:
                kept = [doc.version for doc in await self.store.history(req.module)]
                have = f"versions {kept[0]}..{kept[-1]} are kept" if kept else "it has no config history"
                raise NotFoundError(f"module {req.module!r} has no config version {req.version}: {have}")
            note = f"rollback to version {req.version}"
            return await self._roll_out(req.module, dict(target.values), revision, current, "rollback", note)

    # --- the protocol --------------------------------------------------------------------------
    async def _roll_out(
        self,
        module: str,
        values: dict[str, Any],
        revision: int,
        current: ConfigDocument | None,
        source: str,
        note: str,
    ) -> ConfigChange:
        version = (current.version if current else 0) + 1
        instances = await self._instances(module)
        if instances:
            problems = unknown_fields(instances[0].schema, values)
            if problems:
                raise ValidationError(*problems)
            await self._apply(module, values, version, instances)
        else:
            record = await self.store.schema(module)
            if record is None:
                raise UnavailableError(
                    f"module {module!r} is not running and has never declared its config schema "
                    "(an SDK instance records it when it starts): start it, then set its config"
                )
            problems = check_config(record.schema, values)
            if problems:
                raise ValidationError(*problems)
        applied_to = sorted(i.instance for i in instances)
        document = ConfigDocument(
            module=module, version=version, values=values, time=time.time(), source=source, note=note,
            applied_to=applied_to,
        )  # fmt: skip
        try:
            await self.store.commit(document, revision)
        except ConflictError:
            await self._resync(module)
            raise
        log.info("config of %s: version %d committed (%s)", module, version, note or source)
        change = self._change(document, current, applied_to)
        await self._publish(change)
        return change

    async def _apply(
        self, module: str, values: dict[str, Any], version: int, instances: list[ConfigSchema]
    ) -> None:
        """Send `values` to every instance; if any refuses or is silent, put the others back and raise."""
        accepted, refusals, silent = await self._push(module, values, version, len(instances))
        if not refusals and not silent:
            return
        if accepted or silent:
            # The instances reported their config a moment ago; that is what they go back to.
            # (A silent one may yet apply the new config; it gets the old one after it.)
            old = instances[0]
            _, undo_refusals, undo_silent = await self._push(
                module, old.config, old.config_version, len(instances)
            )
            for problem in [*undo_refusals, *([f"{undo_silent} silent"] if undo_silent else [])]:
                log.error("module %s: could not restore the previous config: %s", module, problem)
        kept = f"module {module!r} keeps its config; nothing was committed"
        if refusals:
            raise ValidationError(*refusals, kept)
        raise UnavailableError(
            f"{silent} of {len(instances)} instances of {module!r} did not answer within "
            f"{self.apply_timeout:g}s; {kept}"
        )

    async def _resync(self, module: str) -> None:
        """After losing a commit race: make the instances run what is committed."""
        _, committed = await self.store.current(module)
        instances = await self._instances(module)
        if committed is not None and instances:
            with contextlib.suppress(Exception):
                await self._push(module, committed.values, committed.version, len(instances))

    async def _push(self, module: str, config: Any, version: int, expect: int) -> tuple[int, list[str], int]:
        """One `config` broadcast: (instances that accepted, the others' reasons, how many were silent)."""
        replies = await self._scatter(
            self.subjects.modctl(module, "config"),
            _encode(config),
            {CONFIG_VERSION_HEADER: str(version)},
            expect=expect,
            wait=self.apply_timeout,
        )
        accepted = 0
        refusals: list[str] = []
        for data in replies:
            reply = _decode_reply(data)
            if reply.success:
                accepted += 1
                continue
            error = _decode_error(reply.payload)
            reason = "; ".join(error.errors) or error.code
            if reason not in refusals:  # every instance of one type refuses a bad type alike
                refusals.append(reason)
        return accepted, refusals, max(0, expect - len(replies))

    async def _instances(self, module: str) -> list[ConfigSchema]:
        """The `schema` reply of every running SDK instance of the module."""
        found = []
        for data in await self._scatter(self.subjects.modctl(module, "schema"), b"", None, expect=None):
            try:
                reply = _decode_reply(data)
                if reply.success:
                    found.append(_decode_schema(reply.payload))
            except msgspec.DecodeError:
                continue  # not an SDK instance of this version
        return sorted(found, key=lambda s: s.instance)

    async def _scatter(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str] | None,
        *,
        expect: int | None,
        wait: float = SCHEMA_WAIT,
    ) -> list[bytes]:
        """Publish once and collect every instance's reply: `expect` of them, or all within `wait`."""
        replies: list[bytes] = []
        enough = asyncio.Event()

        async def collect(msg: Msg) -> None:
            replies.append(msg.data)
            if expect is not None and len(replies) >= expect:
                enough.set()

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=collect)
        try:
            await self.nc.publish(subject, body, reply=inbox, headers=headers)
            await self.nc.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), wait)
        finally:
            await sub.unsubscribe()
        return replies

    # --- events --------------------------------------------------------------------------------
    @staticmethod
    def _change(
        document: ConfigDocument, previous: ConfigDocument | None, applied_to: list[str]
    ) -> ConfigChange:
        before = previous.values if previous else {}
        changed = sorted(k for k in {*before, *document.values} if before.get(k) != document.values.get(k))
        return ConfigChange(
            module=document.module, version=document.version,
            previous_version=previous.version if previous else 0, values=document.values, changed=changed,
            source=document.source, note=document.note, applied_to=applied_to, time=document.time,
        )  # fmt: skip

    async def _publish(self, change: ConfigChange) -> None:
        try:
            await self.js.publish(self.subjects.event("config", change.module), _encode(change), timeout=2.0)
        except Exception as exc:  # the version is committed; the event is its announcement
            log.warning("could not publish the config event of %s: %r", change.module, exc)
