"""Direct reply's pure parts: where reports go, and the switch."""

from __future__ import annotations

import pytest

from corral.runtime.direct import direct_reply_enabled, is_caller_inbox
from corral.subjects import outcomes_subject


def test_a_module_reports_to_the_subject_the_orchestrator_listens_on() -> None:
    assert outcomes_subject("_INBOX.abc123.42") == "_INBOX.abc123.outcomes"


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        (None, True),
        ("1", True),
        ("true", True),
        ("0", False),
        ("false", False),
        (" OFF ", False),
        ("no", False),
    ],
)
def test_corral_direct_reply_switch(value: str | None, enabled: bool) -> None:
    env = {} if value is None else {"CORRAL_DIRECT_REPLY": value}
    assert direct_reply_enabled(env) is enabled


@pytest.mark.parametrize(
    ("subject", "inbox"),
    [
        ("_INBOX.abc.1", True),
        ("_INBOX_team.abc", True),
        ("_INBOX.*", False),
        ("_INBOX.>", False),
        ("_INBOX", False),
        ("corral.state.set", False),
        ("", False),
    ],
)
def test_only_inboxes_are_answered_directly(subject: str, inbox: bool) -> None:
    assert is_caller_inbox(subject) is inbox
