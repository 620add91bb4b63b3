"""Task ids: time-ordered for fresh tasks, derived from the key for idempotent ones.

A fresh id starts with the submission time in milliseconds (hex), so ids sort by submission and
`corral tasks` can list the newest first without reading every record. An idempotency key maps
to one id, so the same key always names the same task: JetStream deduplicates its message by
that id (Nats-Msg-Id) and the scheduler finds its record beyond the duplicate window.
"""

from __future__ import annotations

import hashlib
import secrets
import time

__all__ = ["id_for_key", "new_task_id"]


def new_task_id() -> str:
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def id_for_key(idempotency_key: str) -> str:
    """The id of the task submitted with this idempotency key (`k` + 22 hex of its SHA-256)."""
    return "k" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:22]
