"""The guest's own lifecycle in the fold and the controller's answer: a poweroff is "guest shut
down", a pvpanic crash "guest crashed (panicked)", a reboot changes nothing, a soft reboot is
asked of the node once (pure, no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from msgspec.structs import replace
from test_fold import RUNNING_ON_N1, run, step

from events import commands as c
from events import model as m
from events import work as w
from events.errors import ValidationError
from events.state import VMState, conditions
from events.vmstate import guest_end
from orchestrator.decide import decide
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


def work(s: VMState) -> list[w.Work]:
    return reconcile(s, place=lambda _: "n1", lost_nodes=(), now=NOW, new_uid=lambda: "x").work


def test_a_soft_reboot_is_asked_of_the_node_once_then_done() -> None:
    s = running("Manual")
    assert decide(s, c.SoftRebootVM(name="a")) == [m.VMSoftRebootRequested()]
    asked = step(s, m.VMSoftRebootRequested())
    assert work(asked) == [w.SoftReboot(namespace="default", name="a", node="n1", vmi_uid="uid-1",
                                        version=asked.version)]  # fmt: skip
    sent = step(asked, m.SoftRebootSent(node="n1", method="acpi"))
    assert (work(sent), sent.status) == ([], "Running")
    # A request for an instance that ended is not carried to the next one.
    ended = step(step(asked, m.DomainStopped(node="n1", reason="shutdown")), m.VMStopped())
    for e in (m.VMStartRequested(), m.VMScheduled(node="n1", vmi_uid="uid-2"),
              m.DomainStarted(node="n1"), m.VMRunning(node="n1")):  # fmt: skip
        ended = step(ended, e)
    assert (ended.phase, ended.soft_reboot, work(ended)) == ("Running", "uid-1", [])


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ((), "VM is not running"),
        ((m.DomainPaused(node="n1"),), "VMI is paused"),
        ((m.VMSpecChanged(spec={"template": {"spec": {"domain": {
            "features": {"acpi": {"enabled": False}}}}}}),),
         "VMI neither have the agent connected nor the ACPI feature enabled"),
    ],
)  # fmt: skip
def test_a_soft_reboot_is_refused_in_kubevirts_words(events: tuple[m.Event, ...], why: str) -> None:
    s = run(*RUNNING_ON_N1[:1]) if not events else run(*RUNNING_ON_N1, *events)
    with pytest.raises(ValidationError) as err:
        decide(s, c.SoftRebootVM(name="a"))
    assert err.value.message == why
    if "ACPI" in why:  # with the agent connected, ACPI is not needed
        ok = step(s, m.GuestAgentChanged(node="n1", connected=True))
        assert decide(ok, c.SoftRebootVM(name="a")) == [m.VMSoftRebootRequested()]


def test_the_agent_connected_condition_survives_a_live_migration() -> None:
    agent = {"type": "AgentConnected", "status": "True"}
    s = step(running("Manual"), m.GuestAgentChanged(node="n1", connected=True))
    s = step(s, m.MigrationScheduled(migration="mig-1", source="n1", target="n2"))
    # The target's agent connects while the VM is still the source's; the source's then goes.
    for e in (m.GuestAgentChanged(node="n2", connected=True), m.MigrationStarted(migration="mig-1"),
              m.GuestAgentChanged(node="n1", connected=False)):  # fmt: skip
        s = step(s, e)
    assert (s.node, agent in conditions(s)) == ("n1", False)
    s = step(s, m.MigrationSucceeded(migration="mig-1", source="n1", target="n2"))
    assert (s.node, agent in conditions(s)) == ("n2", True)
    s = step(s, m.GuestAgentChanged(node="n1", connected=False))  # the source's, late: not ours
    assert agent in conditions(s)
    # A failed migration leaves the source's own answer, whatever the target's said.
    s = step(s, m.MigrationScheduled(migration="mig-2", source="n2", target="n1"))
    s = step(s, m.GuestAgentChanged(node="n1", connected=True))
    s = step(s, m.MigrationFailed(migration="mig-2", reason="aborted"))
    assert (s.node, agent in conditions(s)) == ("n2", True)


def test_a_target_that_told_nothing_of_the_agent_keeps_the_sources_answer() -> None:
    s = step(running("Manual"), m.GuestAgentChanged(node="n1", connected=True))
    s = step(s, m.MigrationScheduled(migration="mig-1", source="n1", target="n2"))
    s = step(s, m.MigrationSucceeded(migration="mig-1", source="n1", target="n2"))
    assert (s.node, s.agent_connected) == ("n2", True)
