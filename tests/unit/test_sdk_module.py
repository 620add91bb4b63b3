"""Module declarations that need no NATS."""

from __future__ import annotations

import pytest

from corral.sdk import Module


def test_dependencies_from_the_launcher_join_those_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_DEPENDS_ON", "state, db,,cache")
    module = Module("app", depends_on=["db"])
    assert module.depends_on == ["db", "state", "cache"]


def test_no_launcher_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_DEPENDS_ON", raising=False)
    assert Module("app").depends_on == []


def test_a_bad_dependency_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_DEPENDS_ON", "a b")
    with pytest.raises(ValueError, match="dependency name 'a b' contains ' '"):
        Module("app")
