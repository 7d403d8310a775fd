"""CPU and memory hotplug decisions, KubeVirt's way (pure, no I/O): the room an instance boots
with, what a changed spec asks of a running one, and KubeVirt's RestartRequired words otherwise."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_fold import CREATED, condition, run, step

from events import model as m
from events.kubevirt import Config, config_of
from events.quantity import guest_memory_source
from events.render import vmi_object
from events.state import VMState
from orchestrator.resize import instance_size, only_live_changes, resize_events, sized_spec

GI = 1 << 30


def spec(sockets: int = 1, guest: str = "1Gi", **cpu: Any) -> dict[str, Any]:
    return {"template": {"spec": {"domain": {"cpu": {"sockets": sockets, **cpu},
                                             "memory": {"guest": guest}}}}}  # fmt: skip


def running(size: m.InstanceSize) -> VMState:
    return run(CREATED, m.VMStartRequested(), m.VMScheduled(node="n1", vmi_uid="u", size=size),
               m.DomainStarted(node="n1"))  # fmt: skip


def test_an_instance_gets_kubevirts_hotplug_room() -> None:
    assert instance_size(spec(2, cores=2), Config()) == m.InstanceSize(
        sockets=2, cores=2, max_sockets=8, guest=GI, max_guest=4 * GI)  # fmt: skip
    # Memory hotplug needs 1Gi at least; the object's liveUpdateConfiguration sets the room.
    live = config_of({"configuration": {"liveUpdateConfiguration": {
        "maxCpuSockets": 6, "maxGuest": "2Gi"}}})  # fmt: skip
    assert instance_size(spec(guest="512Mi"), live) == m.InstanceSize(
        max_sockets=6, guest=GI // 2, max_guest=0)  # fmt: skip
    assert instance_size(spec(), live).max_guest == 2 * GI
    stage = config_of({"configuration": {"vmRolloutStrategy": "Stage"}})
    assert instance_size(spec(), stage) == m.InstanceSize(guest=GI)


def test_only_sockets_and_guest_memory_are_live() -> None:
    assert only_live_changes(spec(1), spec(3, guest="2Gi"))
    assert not only_live_changes(spec(1), spec(1, cores=2))
    bare = {"template": {"spec": {"domain": {"devices": {}}}}}
    assert only_live_changes(bare, {"template": {"spec": {"domain": {"devices": {}, "cpu": {
        "sockets": 2}}}}})  # fmt: skip


@pytest.mark.parametrize(
    ("sockets", "guest", "want"),
    [
        (3, "1Gi", [m.HotVCPUChangeRequested(sockets=3)]),
        (2, "3Gi", [m.HotMemoryChangeRequested(guest=3 * GI)]),
        (5, "1Gi", [m.VMRestartRequired(message="CPU sockets updated in template spec to a "
                                               "value higher than what's available")]),
        (1, "1Gi", [m.VMRestartRequired(message="Reduction of CPU socket count requires a "
                                               "restart")]),
        (2, "5Gi", [m.VMRestartRequired(message="memory updated in template spec to a value "
                                               "higher than what's available")]),
        (2, "512Mi", [m.VMRestartRequired(message="memory updated in template spec to a value "
                                                 "lower than what the VM started with")]),
    ],
)  # fmt: skip
def test_a_running_instance_is_resized_or_restart_is_required(
    sockets: int, guest: str, want: list[m.Event]
) -> None:
    s = running(m.InstanceSize(sockets=2, max_sockets=4, guest=GI, max_guest=4 * GI))
    assert resize_events(s, spec(sockets, guest), Config()) == want


def test_hotplug_state_in_the_fold_and_the_vmi() -> None:
    s = running(m.InstanceSize(sockets=1, max_sockets=4, guest=GI, max_guest=4 * GI))
    s = step(s, m.HotVCPUChangeRequested(sockets=2))
    assert resize_events(s, spec(3), Config()) == []  # one at a time
    status = vmi_object(s)["status"]  # type: ignore[index]
    assert {"type": "HotVCPUChange", "status": "True"} in status["conditions"]
    s = step(s, m.HotVCPUChanged(sockets=2, node="n1"))
    status = vmi_object(s)["status"]  # type: ignore[index]
    assert status["currentCPUTopology"] == {"sockets": 2, "cores": 1, "threads": 1}
    assert status["memory"] == {"guestAtBoot": "1Gi", "guestCurrent": "1Gi",
                                "guestRequested": "1Gi"}  # fmt: skip
    assert [c["type"] for c in status["conditions"]] == ["Ready"]
    # Memory: libvirt took the new size (guestRequested); guestCurrent is what the guest itself
    # has plugged of it, as its driver reports (a part of it first, then all).
    s = step(s, m.HotMemoryChangeRequested(guest=GI + (130 << 20)))
    s = step(s, m.HotMemoryChanged(guest=GI + (130 << 20), node="n1"))
    status = vmi_object(s)["status"]  # type: ignore[index]
    assert status["memory"] == {"guestAtBoot": "1Gi", "guestCurrent": "1Gi",
                                "guestRequested": "1154Mi"}  # fmt: skip
    for plugged, current in ((64 << 20, "1088Mi"), (130 << 20, "1154Mi")):
        s = step(s, m.GuestMemoryPlugged(plugged=plugged, node="n1"))
        status = vmi_object(s)["status"]  # type: ignore[index]
        assert status["memory"]["guestCurrent"] == current
    s = step(s, m.HotChangeFailed(resource="memory", reason="unsupported", node="n1"))
    assert condition(s, "RestartRequired") == {
        "type": "RestartRequired", "status": "True", "message": "memory updated in template "
        "spec. Memory-hotplug failed and is not available for this VM configuration"}  # fmt: skip
    assert resize_events(s, spec(4), Config()) == []  # a restart is required already
    s = step(s, m.VMStartRequested())
    assert condition(s, "RestartRequired") is None


def test_other_cores_wait_for_a_restart() -> None:
    s = running(m.InstanceSize(sockets=1, max_sockets=4, guest=GI))
    assert resize_events(s, spec(2, cores=2), Config()) == [
        m.VMRestartRequired(message="a non-live-updatable field was changed in the template spec")
    ]


def test_under_stage_every_change_waits_for_a_restart() -> None:
    s = running(m.InstanceSize(sockets=1, guest=GI))
    stage = config_of({"configuration": {"vmRolloutStrategy": "Stage"}})
    [event] = resize_events(s, spec(2), stage)
    assert event == m.VMRestartRequired(
        message="a non-live-updatable field was changed in the template spec"
    )
    assert resize_events(s, spec(2), Config()) == [
        m.VMRestartRequired(
            message="CPU sockets updated in template spec to a value higher than what's available"
        )
    ]


@pytest.mark.parametrize(
    ("domain", "found"),
    [
        ({"memory": {"guest": "1Gi"}, "resources": {"requests": {"memory": "2Gi"}}},
         ("memory.guest", "1Gi")),
        ({"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "3Gi"}}},
         ("resources.requests.memory", "2Gi")),
        ({"resources": {"limits": {"memory": "3Gi"}}}, ("resources.limits.memory", "3Gi")),
        ({"memory": {"guest": None}, "resources": {"limits": {"memory": "3Gi"}}},
         ("resources.limits.memory", "3Gi")),
        ({}, None),
        ({"memory": "1Gi", "resources": ["x"]}, None),  # wrong shapes: nothing says it
    ],
)  # fmt: skip
def test_the_node_and_the_orchestrator_read_guest_memory_from_one_place(
    domain: dict[str, Any], found: tuple[str, str] | None
) -> None:
    assert guest_memory_source(domain) == found


def test_the_sized_spec_carries_the_boot_size_and_leaves_the_vms_own_untouched() -> None:
    spec = {"running": True, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
        "domain": {"cpu": {"sockets": 1, "maxSockets": 9}, "memory": {"guest": "1Gi"},
                   "devices": {"disks": [{"name": "d"}]}}}}}  # fmt: skip
    before = copy.deepcopy(spec)
    size = m.InstanceSize(sockets=2, cores=1, threads=1, max_sockets=8, guest=2 << 30,
                          max_guest=8 << 30)  # fmt: skip
    out = sized_spec(spec, size)
    assert spec == before  # the state's spec is not edited
    assert out["template"]["spec"]["domain"] == {
        "cpu": {"sockets": 2, "cores": 1, "threads": 1, "maxSockets": 8},
        "memory": {"guest": str(2 << 30), "maxGuest": str(8 << 30)},
        "devices": {"disks": [{"name": "d"}]},
    }
    assert (out["running"], out["template"]["metadata"]) == (True, {"labels": {"a": "b"}})
    assert sized_spec(spec, None) is spec
