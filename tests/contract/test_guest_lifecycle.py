"""The guest's own lifecycle in the fold and the controller's answer: a poweroff is "guest shut
down", a pvpanic crash "guest crashed (panicked)", a reboot changes nothing (pure, no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from msgspec.structs import replace
from test_fold import RUNNING_ON_N1, run, step

from events import model as m
from events.state import VMState, conditions
from events.vmstate import guest_end
from orchestrator.reconcile import reconcile

NOW = datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def answer(s: VMState) -> list[m.Event]:
    uids = (f"uid-{i}" for i in itertools.count(2))
    return reconcile(s, place=lambda _: "n1", lost_nodes=(), now=NOW,
                     new_uid=lambda: next(uids)).events  # fmt: skip


def running(strategy: str) -> VMState:
    s = run(*RUNNING_ON_N1)
    return replace(s, run_strategy=strategy)


@pytest.mark.parametrize(
    ("reason", "told"),
    [("shutdown", "guest shut down"), ("", "guest shut down"), ("destroyed", "guest destroyed"),
     ("crashed (panicked)", "guest crashed (panicked)"), ("crashed", "guest crashed")],
)  # fmt: skip
def test_guest_end_words(reason: str, told: str) -> None:
    assert guest_end(reason) == told


def test_a_guest_poweroff_under_manual_is_stopped_saying_so() -> None:
    s = step(running("Manual"), m.DomainStopped(node="n1", reason="shutdown"))
    assert answer(s) == [m.VMStopped(reason="guest shut down")]


def test_a_guest_poweroff_under_always_is_started_again() -> None:
    s = step(running("Always"), m.DomainStopped(node="n1", reason="shutdown"))
    assert answer(s)[:2] == [
        m.VMStopped(reason="guest shut down; restarting (runStrategy Always)"),
        m.VMStartRequested(restart=True),
    ]


def test_a_panic_is_a_crash_with_its_detail() -> None:
    s = step(running("Manual"), m.DomainStopped(node="n1", reason="crashed", detail="panicked"))
    assert (s.phase, s.status, s.reason) == ("Failed", "Stopped", "crashed (panicked)")
    assert answer(s)[0] == m.VMFailed(reason="guest crashed (panicked)", node="n1")


def test_a_reboot_is_no_stop() -> None:
    before = running("Always")
    after = step(before, m.DomainRebooted(node="n1"))
    assert replace(after, version=before.version, updated=before.updated) == before
    assert answer(after) == []


def test_the_agent_connected_condition_holds_while_the_agent_answers() -> None:
    agent = {"type": "AgentConnected", "status": "True"}
    s = step(running("Manual"), m.GuestAgentChanged(node="n1", connected=True))
    assert agent in conditions(s)
    assert agent not in conditions(step(s, m.GuestAgentChanged(node="n1", connected=False)))
    assert agent not in conditions(step(s, m.DomainStopped(node="n1", reason="shutdown")))
    other = step(running("Manual"), m.GuestAgentChanged(node="n2", connected=True))
    assert agent not in conditions(other)  # not this instance's node: a migration's other side
