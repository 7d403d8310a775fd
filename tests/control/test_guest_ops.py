"""Reset and memory dump as the controller carries them: pure (decide, fold, reconcile), no bus.

A reset is edge-triggered but kept level-triggered: the request's version is what the node's
`DomainRebooted(reset=...)` must answer, so a redelivered or re-decided `Reset` is the same item
and an answered one is not sent again. A dump whose instance ends first is failed by the
controller, since no node will ever answer it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events import commands as c
from events import model as m
from events import work as w
from events.envelope import seal
from events.errors import ValidationError
from events.names import Ref
from events.state import VMState, apply
from orchestrator.decide import decide
from orchestrator.reconcile import reconcile

T0 = datetime(2026, 12, 1, tzinfo=UTC)
SPEC = {"runStrategy": "Manual", "template": {"spec": {"domain": {"devices": {}}}}}


def step(s: VMState, *events: m.Event) -> VMState:
    for e in events:
        v = s.version + 1
        env = seal(e, ref=Ref.vm("a"), version=v, prevhash="", source="/t",
                   time=T0 + timedelta(seconds=v))[0]  # fmt: skip
        s = apply(s, env)
    return s


def running() -> VMState:
    return step(VMState(), m.VMCreated(spec=SPEC, run_strategy="Manual"), m.VMStartRequested(),
                m.VMScheduled(node="n1", vmi_uid="u1"), m.LauncherCreated(node="n1", pod="p"),
                m.DomainStarted(node="n1"), m.VMRunning(node="n1"))  # fmt: skip


def react(s: VMState) -> tuple[list[m.Event], list[w.Work]]:
    r = reconcile(s, place=lambda _: "n1", lost_nodes=(), now=T0, new_uid=lambda: "u2")
    return r.events, r.work


def test_a_reset_is_sent_until_the_node_answers_it() -> None:
    s = running()
    [asked] = decide(s, c.ResetVM(name="a"))
    assert asked == m.VMResetRequested(vmi_uid="u1")
    s = step(s, asked)
    assert react(s) == ([], [w.Reset(namespace="default", name="a", node="n1", vmi_uid="u1",
                                      version=s.version)])  # fmt: skip
    s = step(s, m.DomainRebooted(node="n1", reset=s.version))
    assert react(s) == ([], [])
    assert step(s, m.DomainRebooted(node="n1")).reset_done == s.reset_done  # the guest's own
    with pytest.raises(ValidationError) as nothing:
        decide(step(VMState(), m.VMCreated(spec=SPEC)), c.ResetVM(name="a"))
    assert nothing.value.message == 'virtualmachineinstance.kubevirt.io "a" not found'


def test_a_dump_whose_instance_ended_first_fails() -> None:
    s = step(running(), m.MemoryDumpRequested(claim="d", vmi_uid="u1"))
    assert react(s)[1] == [w.DumpMemory(namespace="default", name="a", node="n1", vmi_uid="u1",
                                        version=s.version, claim="d")]  # fmt: skip
    with pytest.raises(ValidationError, match=r"^memory dump request for pvc \[d\] already in"):
        decide(s, c.MemoryDumpVM(name="a", claim="d"))
    s = step(s, m.DomainStopped(node="n1", reason="destroyed"), m.VMStopped(reason="stopped"))
    events, work = react(s)
    assert (events, work) == (
        [m.MemoryDumpFailed(claim="d", reason="the VMI stopped before its memory was dumped")],
        [],
    )
    s = step(s, *events)
    assert s.memory_dump is not None and (s.memory_dump.phase, s.memory_dump.message) == (
        "Failed", "the VMI stopped before its memory was dumped")  # fmt: skip
    assert decide(s, c.RemoveMemoryDump(name="a")) == [m.MemoryDumpRemoved(claim="d")]
