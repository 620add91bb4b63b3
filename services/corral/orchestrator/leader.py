"""Leader election between orchestrator replicas: one lease in KV `corral_leases`.

The lease is one key (the lease name, `orchestrator`) whose value says who holds it. Every
write is a compare-and-set on the key's revision (`kv.create`, `kv.update(last=revision)`),
so of two replicas racing for the same revision exactly one wins.

Expiry is judged the way Kubernetes' client-go leader election judges it: on each replica's
own monotonic clock, never on a timestamp written by another machine.

* A standby notes the time it first saw the current revision. If that revision is still the
  current one `ttl` seconds later, the holder has stopped renewing. The standby then takes the
  lease with `update(last=that revision)`.
* The leader counts from the moment it *sent* its last successful write. It renews every
  `ttl / 3`, and stops leading at `sent + ttl - margin` even when it cannot reach NATS to learn
  anything.

A standby saw the revision no earlier than it was written, and the write came after the leader
sent it. So the leader gives up at least `margin` before any standby may take over, and two
replicas never both believe they lead.

Handing over is fast on a clean stop. The leader first tells its own callbacks it is no longer
leader, and then deletes the key (CAS on its revision). Standbys watch the key, see the delete
and race to `create` it.

No server-side TTL is used. A bucket TTL would apply to every lease in the bucket, and
`msg_ttl` only has whole seconds. The cost is that a dead leader's entry stays in the bucket
until a standby replaces it. Readers judge that staleness the same way, so `leader` is None
once the lease has lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from corral.bus import KVSpec, ensure_kv, ensure_stream, events_stream_spec
from corral.component import Component, cancel_and_wait
from corral.subjects import Subjects

__all__ = ["DEFAULT_TTL", "LeaderEvent", "Leadership", "Lease", "LeaseView"]

log = logging.getLogger("corral.orchestrator.leader")

DEFAULT_TTL: Final = 6.0  # seconds a lease lasts without renewal

ChangeCallback = Callable[[bool], Awaitable[None]]

# JetStream's "wrong last sequence" error codes (kv.delete does not translate them as update does).
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)


class Lease(msgspec.Struct, kw_only=True):
    """The value of a lease key. The wall-clock times are for people; expiry never reads them."""

    holder: str  # instance id of the replica that holds it
    term: str  # unique per acquisition, so a holder recognises its own writes
    ttl: float
    acquired: float
    renewed: float


class LeaderEvent(msgspec.Struct, kw_only=True):
    """Published on `<prefix>.evt.lifecycle.leader.<lease>` when a replica gains or loses the lease."""

    lease: str
    instance: str
    leader: bool  # True: this instance now leads; False: it stopped leading
    term: str
    reason: str
    time: float


class LeaseView:
    """One replica's judgement of someone else's lease, on its own clock (pure: `now` is passed in)."""

    def __init__(self) -> None:
        self.revision = 0
        self.lease: Lease | None = None
        self.seen_at = 0.0

    def observe(self, revision: int, lease: Lease | None, now: float) -> None:
        """Record what the key holds; the clock restarts only when the revision changes."""
        if revision != self.revision or lease is None:
            self.seen_at = now
        self.revision = revision
        self.lease = lease

    def expired(self, now: float) -> bool:
        """True when nobody holds the lease, or its holder has not renewed for a whole ttl."""
        return self.lease is None or now - self.seen_at >= self.lease.ttl

    def holder(self, now: float) -> str | None:
        return None if self.expired(now) or self.lease is None else self.lease.holder


class Leadership(Component):
    """Hold or wait for the lease `name` in the leases bucket.

    `on_change(callback)` registers `async def callback(leading: bool)`, awaited in order on
    every gain and loss. A slow callback does not delay renewals.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        instance_id: str,
        *,
        ttl: float = DEFAULT_TTL,
        name: str = "orchestrator",
        margin: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self.js = js
        self.subjects = subjects
        self.instance_id = instance_id
        self.name = name
        self.ttl = ttl
        # Slack between when this replica stops leading and when any standby may take over.
        # It covers clock-rate drift and the time callbacks take to stop acting.
        self.margin = ttl / 5 if margin is None else margin
        if not 0 <= self.margin < ttl:
            raise ValueError(f"margin must be in [0, ttl), got {self.margin}")
        self.renew_interval = ttl / 3
        self.poll_interval = ttl / 4
        self.view = LeaseView()
        self._kv: KeyValue | None = None
        self._term: str | None = None  # set while this replica leads
        self._last_term: str | None = None  # the term it held last, to reclaim after a blip
        self._revision = 0  # the revision of this replica's last write, while leading
        self._valid_until = 0.0  # monotonic; leading is only believed before this
        self._acquired = 0.0
        self._expiry: asyncio.TimerHandle | None = None
        self._leading = asyncio.Event()
        self._wake = asyncio.Event()
        self._callbacks: list[ChangeCallback] = []
        self._changes: asyncio.Queue[tuple[bool, str, str]] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None
        self._notify_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._failing_since: float | None = None
        self._written: Lease | None = None  # the value of this replica's last write
        self._publishing: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(Lease).decode

    # --- what callers use -------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        # Judged on the clock too, so the answer is right even if the event loop runs late.
        return self._term is not None and time.monotonic() < self._valid_until

    @property
    def leader(self) -> str | None:
        """The instance id of the current holder, as this replica last saw it (None: nobody)."""
        if self.is_leader:
            return self.instance_id
        return self.view.holder(time.monotonic())

    @property
    def term(self) -> str | None:
        return self._term if self.is_leader else None

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def wait_until_leader(self) -> None:
        while not self.is_leader:
            await self._leading.wait()
            if not self.is_leader:
                await asyncio.sleep(0)  # the flag is being cleared by a loss in progress

    def snapshot(self) -> dict[str, Any]:
        """What `corral.orchestrator.status` reports."""
        now = time.monotonic()
        lease = self.view.lease
        return {
            "lease": self.name,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "term": self.term,
            "ttl": self.ttl,
            "lease_valid_for": round(max(0.0, self._valid_until - now), 3) if self.is_leader else None,
            "holder_seen": lease.holder if lease is not None else None,
        }

    # --- Component ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopped = False
        await ensure_stream(self.js, events_stream_spec(self.subjects))
        self._kv = await ensure_kv(self.js, KVSpec(bucket=self.subjects.leases_bucket, history=1))
        self._notify_task = asyncio.create_task(self._notify_loop(), name=f"lease-{self.name}-notify")
        self._watch_task = asyncio.create_task(self._watch(), name=f"lease-{self.name}-watch")
        self._loop_task = asyncio.create_task(self._run(), name=f"lease-{self.name}")

    async def stop(self, *, step_down: bool = True) -> None:
        """Stop contending. A leader steps down (its callbacks are told first, then the key is
        deleted) so a standby takes over at once; `step_down=False` only stops locally, and the
        lease lapses after its ttl, as if this replica had died."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._loop_task, self._watch_task):
            if task is not None:
                await cancel_and_wait(task)
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        term = self._term
        if term is not None:
            self._lose("stepping down" if step_down else "stopped")
        await self._drain_notifications()
        if term is not None and step_down:
            try:
                await self._release(term)
            except Exception as exc:
                log.warning("could not release lease %s: %r (it lapses in %.1fs)", self.name, exc, self.ttl)
        if self._notify_task is not None:
            await cancel_and_wait(self._notify_task)
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=2.0)
        self._loop_task = self._watch_task = self._notify_task = None

    async def _release(self, term: str) -> None:
        """Delete the key if it still holds `term` (CAS), so a standby need not wait for a lapse."""
        assert self._kv is not None
        revision = self._revision
        for _ in range(2):
            try:
                await self._call(self._kv.delete(self.name, last=revision))
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
            # A renewal cancelled by stop() may have landed after all: look before giving up.
            revision, lease = await self._read()
            if lease is None or lease.term != term:
                return  # someone else holds it already

    # --- the election loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopped:
            try:
                if self._term is not None:
                    await self._renew()
                else:
                    await self._contend()
                self._failing_since = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Typically the connection is down. The expiry timer ends leadership in time, so
                # there is nothing to do but keep trying; log once per outage.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("lease %s: cannot reach the leases bucket: %r", self.name, exc)
            interval = self.renew_interval if self._term is not None else self.poll_interval
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def _call(self, op: Awaitable[Any]) -> Any:
        # Bounded so that one hung request cannot outlast a renewal period.
        return await asyncio.wait_for(op, self.renew_interval)

    async def _read(self) -> tuple[int, Lease | None]:
        """(revision, lease) of the key; revision 0 when it never existed, lease None if deleted."""
        assert self._kv is not None
        try:
            entry = await self._call(self._kv.get(self.name))
        except nats.js.errors.KeyNotFoundError as exc:
            deleted = getattr(exc, "entry", None)
            return (deleted.revision if deleted is not None else 0), None
        try:
            return entry.revision, self._decode(entry.value)
        except msgspec.DecodeError:
            log.warning(
                "lease %s holds a malformed value; treating it as a lease of %.1fs", self.name, self.ttl
            )
            return entry.revision, Lease(holder="?", term="?", ttl=self.ttl, acquired=0.0, renewed=0.0)

    def _value(self, term: str) -> bytes:
        now = time.time()
        acquired = self._acquired if term == self._term else now
        self._written = Lease(
            holder=self.instance_id, term=term, ttl=self.ttl, acquired=acquired, renewed=now
        )
        return self._encode(self._written)

    async def _contend(self) -> None:
        assert self._kv is not None
        revision, lease = await self._read()
        now = time.monotonic()
        self.view.observe(revision, lease, now)
        term = uuid.uuid4().hex[:12]
        sent = time.monotonic()
        try:
            if lease is None:
                # Never held, or released: `create` also re-creates a deleted key.
                new_revision = await self._call(self._kv.create(self.name, self._value(term)))
                reason = "lease was free"
            elif lease.term == self._last_term or self.view.expired(now):
                # Lapsed (or still this replica's own, after an outage): take it over only if
                # nobody has written since the revision judged.
                new_revision = await self._call(self._kv.update(self.name, self._value(term), last=revision))
                reason = (
                    "reclaimed own lease"
                    if lease.term == self._last_term
                    else f"lease of {lease.holder} lapsed"
                )
            else:
                return
        except nats.js.errors.KeyWrongLastSequenceError:
            self._wake.set()  # another replica won the race; look again at once
            return
        self._gain(term, new_revision, sent, reason)

    async def _renew(self) -> None:
        assert self._kv is not None
        assert self._term is not None
        term = self._term
        sent = time.monotonic()
        try:
            revision = await self._call(self._kv.update(self.name, self._value(term), last=self._revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            # An earlier renewal may have landed with its reply lost: then the key is still ours.
            current, lease = await self._read()
            if lease is not None and lease.term == term:
                self._revision = current  # validity is not extended: that write's time is unknown
                self._wake.set()
                return
            holder = lease.holder if lease is not None else "nobody"
            self._lose(f"lease taken over (now held by {holder})")
            return
        if self._term != term:
            return  # leadership ended while the write was in flight (the expiry timer fired)
        self._revision = revision
        self._extend(sent)

    # --- transitions --------------------------------------------------------------------------------
    def _gain(self, term: str, revision: int, sent: float, reason: str) -> None:
        self._term = self._last_term = term
        self._revision = revision
        self._acquired = self._written.acquired if self._written is not None else time.time()
        self._extend(sent)
        if not self.is_leader:  # the write took longer than the whole validity
            self._lose("acquired too late to act on")
            return
        log.info("lease %s: %s leads (%s)", self.name, self.instance_id, reason)
        self._leading.set()
        self._changes.put_nowait((True, term, reason))

    def _extend(self, sent: float) -> None:
        self._valid_until = sent + self.ttl - self.margin
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, self._valid_until - time.monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if self._term is not None:
            self._lose(f"could not renew for {self.ttl - self.margin:.1f}s")
            self._wake.set()

    def _lose(self, reason: str) -> None:
        term, self._term = self._term, None
        self._valid_until = 0.0
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._leading.clear()
        if term is None:
            return
        log.warning("lease %s: %s no longer leads (%s)", self.name, self.instance_id, reason)
        # Until told otherwise, the key holds what this replica last wrote, lapsing in a ttl.
        self.view.observe(self._revision, self._written, time.monotonic())
        self._changes.put_nowait((False, term, reason))

    # --- notifications and the watch ----------------------------------------------------------------
    async def _notify_loop(self) -> None:
        while True:
            leading, term, reason = await self._changes.get()
            try:
                for callback in list(self._callbacks):
                    try:
                        await callback(leading)
                    except Exception:
                        log.exception("lease %s: change callback failed", self.name)
                # Not awaited here: with NATS unreachable it would hold up the next change.
                task = asyncio.create_task(self._publish(leading, term, reason))
                self._publishing.add(task)
                task.add_done_callback(self._publishing.discard)
            finally:
                self._changes.task_done()

    async def _drain_notifications(self) -> None:
        if self._notify_task is None or self._notify_task.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changes.join(), max(self.ttl, 5.0))

    async def _publish(self, leading: bool, term: str, reason: str) -> None:
        event = LeaderEvent(
            lease=self.name,
            instance=self.instance_id,
            leader=leading,
            term=term,
            reason=reason,
            time=time.time(),
        )
        try:
            await self.js.publish(self.subjects.leader_event(self.name), self._encode(event), timeout=2.0)
        except Exception as exc:  # the event is for people; the lease itself is the truth
            log.warning("could not publish leadership event: %r", exc)

    async def _watch(self) -> None:
        """Wake the loop when the key is deleted (a clean step-down), so handover takes milliseconds.

        The poll in the loop works without the watch, which only makes handover faster."""
        assert self._kv is not None
        while not self._stopped:
            try:
                self._watcher = await self._kv.watch(self.name)
                async for entry in self._watcher:
                    if entry is not None and entry.operation is not None:
                        self._wake.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("lease %s watch failed: %r; retrying", self.name, exc)
                await asyncio.sleep(self.poll_interval)
