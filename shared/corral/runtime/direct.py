"""Direct reply: an SDK module answers the orchestrator's caller itself, and reports how it went.

The orchestrator forwards `<prefix>.send.<module>` to `<prefix>.mod.<module>.<type>` with its
own inbox as the reply subject and the header `Corral-Direct-Reply: <caller's inbox>
<seconds left of the call>`. A module
endpoint that supports it (`direct_reply=True`, which SDK modules advertise in their Services
API metadata) then:

* sends its reply to the caller, not to the orchestrator, which so handles two messages per
  call instead of four;
* reports the outcome (`ok` or the error code) keyed by the forward's reply subject, to the
  subject `corral.subjects.outcomes_subject` derives from that reply subject, batched:
  one `OutcomeBatch` per orchestrator per event-loop turn, published *before* that turn's
  replies, in the same write. So the orchestrator reads the report before any request the
  caller sends after seeing the reply (the server keeps a connection's messages in order):
  a caller's next call finds the breaker and bulkhead already settled by the previous one;
* answers TIMEOUT itself when the call's time is up (the handler keeps running, as it does
  when the orchestrator times a call out, and its late result is dropped), so the call has
  one answer, decided in one place;
* sends nothing at all later than DIRECT_REPLY_GRACE / 2 after the deadline (a loop stalled
  that long): by then the orchestrator may answer TIMEOUT on its own, after
  DIRECT_REPLY_GRACE without a report, and the caller must not get two answers.

No-responders still reach the orchestrator, because the forward's reply subject is its own.

Only an inbox is answered directly (`is_caller_inbox`: `_INBOX...`, no wildcard): anyone who
may publish to `<prefix>.mod.>` could otherwise name any subject in the header and have the
module publish its Response there. A request naming anything else is answered on its reply
subject, as a plain request; through the orchestrator that still reaches the caller (the mux
relays an answer on its own inbox). A caller with a custom inbox prefix that does not start
with `_INBOX` is served that way too, one hop longer.

Reconnects: answers due while the module is disconnected are not sent (nats-py would buffer
and send them after reconnecting, perhaps after the orchestrator's own TIMEOUT); the caller
then gets that TIMEOUT. If the orchestrator reconnected while a call was in flight and no
report came, it cannot know whether the caller was answered: it answers nothing and judges
nothing (the outcome is "unknown"). What remains is a reply already handed to the socket
just before a disconnect and delivered more than DIRECT_REPLY_GRACE / 2 late.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.protocol import (
    DIRECT_REPLY_GRACE,
    ErrorCode,
    Outcome,
    OutcomeBatch,
    codec_for,
)
from corral.runtime.deadlines import Deadlines, Handle
from corral.runtime.endpoints import Reply, error_reply
from corral.runtime.inline import publish_nowait, write_pending
from corral.subjects import outcomes_subject

__all__ = ["DIRECT_REPLY_METADATA", "MAX_BATCH", "DirectReplies", "direct_reply_enabled", "is_caller_inbox"]

log = logging.getLogger("corral.runtime")

# The endpoint metadata key (value "true") by which the orchestrator learns, from discovery,
# that every instance of a module answers forwarded calls directly.
DIRECT_REPLY_METADATA = "direct_reply"
MAX_BATCH = 1000  # outcomes per report message (about 40 bytes each), far under max_payload


def direct_reply_enabled(env: Mapping[str, str] | None = None) -> bool:
    """CORRAL_DIRECT_REPLY, default on; `0`/`false`/`no`/`off` turns it off, in the orchestrator
    (it answers every call itself) and in SDK modules (they neither advertise nor honour it)."""
    value = (os.environ if env is None else env).get("CORRAL_DIRECT_REPLY", "1")
    return value.strip().lower() not in {"0", "false", "no", "off"}


class DirectReplies:
    """Serves requests that carry `Corral-Direct-Reply`: one answer, to the caller, and a report."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._replies: list[tuple[str, Reply]] = []  # (caller's inbox, reply) of this loop turn
        self._outcomes: dict[str, list[Outcome]] = {}  # per orchestrator, this loop turn
        self._flushing: asyncio.Handle | None = None
        self._encode = msgspec.json.Encoder().encode
        self._deadlines = Deadlines()
        self.dropped = 0  # answers not sent because they came too late
        self.reported = 0  # outcomes handed to the connection

    async def serve(
        self,
        msg: Msg,
        header: str,
        response_type: str,
        run: Callable[[], Awaitable[tuple[Reply, int]]],
    ) -> tuple[Reply, int]:
        """Run the request (`run()` returns the Reply and its nanoseconds), answering the caller
        named in `header` (the Corral-Direct-Reply value) exactly once or not at all."""
        parts = header.split(" ")
        if len(parts) != 2 or not msg.reply or not is_caller_inbox(parts[0]):
            # Not from an orchestrator, or naming a subject that is no caller's inbox (a module
            # must not be made to publish its answers onto other subjects): answer as usual.
            result = await run()
            if msg.reply:
                self._answer(msg.reply, result[0], "", "")
            return result
        reply_to, seconds = parts
        call = msg.reply
        outcomes = outcomes_subject(call)
        timeout = _seconds(seconds)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answered = False
        timer: Handle | None = None

        def too_late() -> bool:
            return timeout is not None and loop.time() > started + timeout + DIRECT_REPLY_GRACE / 2

        def on_deadline() -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if too_late():
                self.dropped += 1
                return
            reply = error_reply(
                codec_for(msg.headers),
                response_type,
                ErrorCode.TIMEOUT,
                f"{msg.subject} did not finish within the call's timeout of {timeout:g}s",
            )
            self._answer(reply_to, reply, outcomes, call)

        if timeout is not None:
            timer = self._deadlines.add(timeout, on_deadline)
        try:
            result = await run()
        finally:
            if timer is not None:
                self._deadlines.cancel(timer)
        if answered:
            return result  # TIMEOUT went out already; this late result is dropped
        answered = True
        if too_late():
            self.dropped += 1
        else:
            self._answer(reply_to, result[0], outcomes, call)
        return result

    def _answer(self, reply_to: str, reply: Reply, outcomes: str, call: str) -> None:
        self._replies.append((reply_to, reply))
        if outcomes:
            self._outcomes.setdefault(outcomes, []).append(Outcome(call, reply.code))
        if self._flushing is None:
            # Runs once every request of this loop turn has answered: one report per orchestrator.
            self._flushing = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = None
        replies, self._replies = self._replies, []
        outcomes, self._outcomes = self._outcomes, {}
        if not replies:
            return
        if not self.nc.is_connected:
            # nats-py would buffer them and send them after reconnecting, maybe after the
            # orchestrator answered TIMEOUT itself: send nothing, let it answer.
            self.dropped += len(replies)
            return
        try:
            for subject, batch in outcomes.items():  # reports first: see the module docstring
                for start in range(0, len(batch), MAX_BATCH):
                    publish_nowait(
                        self.nc, subject, self._encode(OutcomeBatch(batch[start : start + MAX_BATCH]))
                    )
                self.reported += len(batch)
            for reply_to, reply in replies:
                publish_nowait(self.nc, reply_to, reply.data, headers=reply.headers)
            write_pending(self.nc)  # this loop turn's batch is complete: no need to wait a turn
        except Exception as exc:  # closing: the orchestrator answers these calls after its grace
            log.warning("could not send direct replies: %r", exc)

    async def drain(self) -> None:
        """Hand the answers of this loop turn to the connection (before it closes)."""
        if self._flushing is not None:
            self._flushing.cancel()
        self._flush()


def is_caller_inbox(subject: str) -> bool:
    """Whether `subject` can be a requester's reply inbox: `_INBOX.<...>` (nats-py's, the NATS
    CLI's and most clients' default, or a custom `_INBOX_<name>.` prefix), with no wildcard."""
    return subject.startswith("_INBOX") and "." in subject and "*" not in subject and ">" not in subject


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
