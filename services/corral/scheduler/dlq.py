"""The dead-letter queue, CORRAL_DLQ: one message per task whose every attempt failed.

Workers write dead letters (they know the error and traceback of the last attempt); the
scheduler lists, shows, retries and purges them.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from corral.errors import NotFoundError
from corral.scheduling.messages import DeadLetter
from corral.subjects import Subjects

__all__ = ["DeadLetters"]

_decode = msgspec.json.Decoder(DeadLetter).decode


class DeadLetters:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.subjects = subjects
        self.stream = subjects.dlq_stream

    async def count(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.messages)

    async def list(self, limit: int) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        seq = 1
        while len(letters) < limit:
            try:
                raw = await self.js.get_msg(
                    self.stream, seq=seq, subject=self.subjects.dead_letters_all, next=True
                )
            except nats.js.errors.NotFoundError:
                break
            letter = _decode(raw.data or b"{}")
            letter.seq = int(raw.seq or 0)
            letters.append(letter)
            seq = letter.seq + 1
        return letters

    async def show(self, task_id: str) -> DeadLetter:
        try:
            raw = await self.js.get_last_msg(self.stream, self.subjects.dead_letter(task_id))
        except nats.js.errors.NotFoundError:
            raise NotFoundError(
                f"task {task_id!r} is not in the dead-letter queue ({self.stream}); "
                "`corral dlq list` shows what is"
            ) from None
        letter = _decode(raw.data or b"{}")
        letter.seq = int(raw.seq or 0)
        return letter

    async def remove(self, task_id: str) -> int:
        """Delete a task's dead letters; how many there were."""
        info = await self.js.stream_info(self.stream, subjects_filter=self.subjects.dead_letter(task_id))
        count = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        if count:
            await self.js.purge_stream(self.stream, subject=self.subjects.dead_letter(task_id))
        return int(count)

    async def purge(self) -> int:
        count = await self.count()
        await self.js.purge_stream(self.stream)
        return count
