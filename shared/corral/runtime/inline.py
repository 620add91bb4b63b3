"""Inline NATS I/O for the request path: delivery inside nats-py's read loop, publishing
without awaiting.

nats-py hands each message of a callback subscription to an `asyncio.Queue` that a task per
subscription drains, awaiting the callback; and `Client.publish` is a coroutine that kicks
the flusher task through another queue. Per forwarded call that is a queue round trip, a
task switch and a loop iteration on the way in, and a stack of coroutine frames and a
per-character header sanitiser on the way out: on the orchestrator's call path, more than
the call's own work (bench/call_path.py; README, Benchmarks).

* `deliver_inline(sub, deliver)` makes nats-py call `deliver(msg)` (a plain function) as it
  parses each message of `sub`, in its read loop: no queue, no task. `deliver` must not
  block; to do real work it starts a task, as a subscription callback would.
* `publish_nowait(nc, ...)` is `Client.publish` without the await: the command joins the
  connection's pending buffer, and the flusher is kicked once. Everything published while
  one read is processed goes out in one socket write, in publish order, as with `publish`.
  `write_pending(nc)` writes that buffer at once, for the end of a batch.
  It does not wait for a full buffer to drain (nats-py's `flush_timeout`); callers bound what
  they publish (bulkheads, the replies to requests in flight).

Both use nats-py internals (a Subscription's pending queue, a Client's pending buffer and
flusher queue). `supported()` checks that they are there, and tests/integration/test_inline.py
pins the behaviour against a real nats-server, so a nats-py release that moves them fails
the tests instead of the call path. Where they are missing, `deliver_inline` leaves the
subscription as it is (returns False) and `publish_nowait` publishes through a task.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["deliver_inline", "is_inline", "publish_nowait", "supported", "write_pending"]

log = logging.getLogger("corral.runtime.inline")

_CLIENT_INTERNALS = (
    "_transport",
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_max_payload",
    "_flush_queue",
    "_flusher_task",
    "stats",
)
_SUBSCRIPTION_INTERNALS = ("_conn", "_pending_queue", "_pending_size", "_wait_for_msgs_task")
_BAD_SUBJECT = re.compile(r"[\s]")  # what would end the protocol line (nats-py rejects it too)
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 token, as nats-py
_known_keys: set[str] = set()  # header keys that passed the check: a handful in practice
_MAX_KNOWN_KEYS = 256
_CRLF = b"\r\n"
_background: set[asyncio.Task[None]] = set()
_client_types: dict[type, bool] = {}


def supported(nc: Client, sub: Subscription | None = None) -> bool:
    """True if this nats-py has the internals inline I/O uses (for `sub` too, if given)."""
    known = _client_types.get(type(nc))
    if known is None:  # once per client class: nats-py sets them all in Client.__init__
        known = _client_types[type(nc)] = all(hasattr(nc, name) for name in _CLIENT_INTERNALS)
    return known and (sub is None or all(hasattr(sub, name) for name in _SUBSCRIPTION_INTERNALS))


class _Handover:
    """Stands in for a Subscription's pending queue: every message goes to `deliver` at once."""

    __slots__ = ("deliver", "nc", "sub")

    def __init__(self, sub: Subscription, deliver: Callable[[Msg], None]) -> None:
        self.sub = sub
        self.nc: Client = sub._conn
        self.deliver = deliver

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)  # nats-py added it for the queue we replace
        try:
            self.deliver(msg)
        except Exception:  # one message's failure must not stop the connection's read loop
            log.exception("delivering a message on %s failed", msg.subject)
        nc = self.nc
        if nc._pending and not _unparsed(nc):
            # The last message of what was read: what its deliveries published goes out now,
            # in one write, rather than in the flusher's turn (a loop iteration later).
            write_pending(nc)

    # What nats-py asks of a pending queue besides put_nowait: always empty.
    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None

    async def get(self) -> Msg:
        raise RuntimeError("messages of an inline subscription are delivered, not queued")

    def get_nowait(self) -> Msg:
        raise asyncio.QueueEmpty


def is_inline(sub: Subscription) -> bool:
    """True once `deliver_inline` took over `sub`."""
    return isinstance(getattr(sub, "_pending_queue", None), _Handover)


def _unparsed(nc: Client) -> int:
    """Bytes nats-py has read and not yet parsed (-1 if this nats-py does not say)."""
    parser = getattr(nc, "_ps", None)
    buf = getattr(parser, "buf", None)
    return -1 if buf is None else len(buf)


def deliver_inline(sub: Subscription, deliver: Callable[[Msg], None]) -> bool:
    """From now on, nats-py calls `deliver(msg)` for each message of `sub` as it reads it.

    The subscription's own callback task (if it has one) is stopped; its callback is no longer
    called. False (and nothing changed) where this nats-py lacks the internals."""
    if not hasattr(sub, "_conn") or not supported(sub._conn, sub):
        return False
    task = sub._wait_for_msgs_task
    if task is not None and not task.done():
        if not sub._pending_queue.empty():
            return False  # messages already queued for the callback: leave it be
        task.cancel()
    sub._pending_queue = _Handover(sub, deliver)  # type: ignore[assignment]
    return True


def publish_nowait(
    nc: Client,
    subject: str,
    payload: bytes = b"",
    reply: str = "",
    headers: Mapping[str, str] | None = None,
) -> None:
    """`await nc.publish(subject, payload, reply, headers)`, without awaiting: the same checks
    and errors (nats.errors.*), the same bytes on the wire, the same order."""
    if not supported(nc):
        _spawn(nc.publish(subject, payload, reply=reply, headers=dict(headers) if headers else None))
        return
    if not subject or _BAD_SUBJECT.search(subject) or (reply and _BAD_SUBJECT.search(reply)):
        raise nats.errors.BadSubjectError
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    size = len(payload)
    if size > nc._max_payload:
        raise nats.errors.MaxPayloadError
    connected = nc.is_connected
    if not connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
        raise nats.errors.OutboundBufferLimitError  # reconnecting, and no room to buffer it
    if headers:
        block = header_block(headers)
        command = (
            f"HPUB {subject} {reply} {len(block)} {len(block) + size}\r\n".encode() + block + payload + _CRLF
        )
    else:
        command = f"PUB {subject} {reply} {size}\r\n".encode() + payload + _CRLF
    nc._pending.append(command)
    nc._pending_data_size += len(command)
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += size
    if not connected:
        return  # nats-py sends the pending buffer once it has reconnected
    _kick_flusher(nc)


def write_pending(nc: Client) -> None:
    """Write what is pending on `nc` to its socket now, instead of in the flusher's next turn:
    for the end of a batch (one loop turn's direct replies), where waiting for the flusher
    costs a loop iteration and gains nothing. Backpressure stays nats-py's: the flusher
    still awaits the socket's drain when it next runs."""
    if not nc._pending or not nc.is_connected or not supported(nc):
        return
    transport = nc._transport
    if transport is None:
        return
    try:
        transport.writelines(nc._pending)
    except Exception:  # a broken socket: the flusher meets it too, and nats-py reconnects
        _kick_flusher(nc)
        return
    nc._pending = []
    nc._pending_data_size = 0


def header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS/1.0 header block nats-py would write: keys checked, values trimmed, CR and LF
    in a value turned to spaces (so a value can never end the line)."""
    parts = ["NATS/1.0\r\n"]
    for raw_key, raw_value in headers.items():
        key = raw_key.strip()
        if not key:
            continue
        if key not in _known_keys:
            if not _HEADER_KEY.fullmatch(key):
                raise nats.errors.BadHeaderError(key)
            if len(_known_keys) < _MAX_KNOWN_KEYS:
                _known_keys.add(key)
        value = raw_value.strip()
        if "\r" in value or "\n" in value:
            value = value.replace("\r", " ").replace("\n", " ")
        parts.append(f"{key}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


def _kick_flusher(nc: Client) -> None:
    queue = nc._flush_queue
    flusher = nc._flusher_task
    if queue is None or flusher is None or flusher.done():
        _spawn(nc._flush_pending())  # nats-py writes inline when its flusher is gone
    elif queue.empty():  # one kick per batch: the flusher writes all that is pending
        queue.put_nowait(asyncio.get_running_loop().create_future())


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Task[None]) -> None:
    _background.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("a background publish failed: %r", exc)
