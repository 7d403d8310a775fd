"""CPU and memory hotplug on libvirt's test driver, end to end: a running VM's sockets grow live
(setVcpus on the domain a real node worker defined with room for them); a memory change the node
cannot make live ends in KubeVirt's RestartRequired, and the next start takes the new size."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from driverstack import Stack, seed

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref
from events.render import vmi_object
from events.state import VMState, conditions

GI = 1 << 30


def sized(sockets: int, guest: str) -> c.ApplyVM:
    vm = seed("grow", runStrategy="Always")
    domain = vm.spec["template"]["spec"]["domain"]
    domain["cpu"]["sockets"] = sockets
    domain["memory"] = {"guest": guest}
    return vm


async def until(stack: Stack, ok: Callable[[VMState], bool]) -> VMState:
    for _ in range(400):
        if ok(s := await stack.state("grow")):
            return s
        await asyncio.sleep(0.05)
    pytest.fail(f"grow never got there: {s}")


async def test_sockets_hotplug_live_and_memory_waits_for_the_restart(stack: Stack) -> None:
    for node in ("node-a", "node-b"):
        stack.provide_seed_volumes(node)
    worker, other = await stack.driver_node("node-a"), await stack.driver_node("node-b")
    await send(stack.nc, sized(1, "1Gi"))
    s = await stack.until("grow", "Running")
    # KubeVirt's room under LiveUpdate: 4x the sockets, 4x the memory (from 1Gi up).
    assert s.size == m.InstanceSize(sockets=1, max_sockets=4, guest=GI, max_guest=4 * GI)
    vcpu = ET.fromstring(await worker.hv.xml("default_grow")).find("vcpu")
    assert vcpu is not None and (vcpu.get("current"), vcpu.text) == ("1", "4")

    seen = len(await stack.kinds("grow"))
    out = await send(stack.nc, sized(2, "1Gi"))
    assert out.events == ["io.virtbus.vm.spec_changed.v1"]
    s = await until(stack, lambda s: s.sockets_now == 2)
    assert (await stack.kinds("grow"))[seen:] == [
        "VMSpecChanged", "HotVCPUChangeRequested", "HotVCPUChanged"]  # fmt: skip
    vcpu = ET.fromstring(await worker.hv.xml("default_grow")).find("vcpu")
    assert vcpu is not None and vcpu.get("current") == "2"
    vmi = vmi_object(s)
    assert vmi is not None and vmi["status"]["currentCPUTopology"]["sockets"] == 2
    assert not s.restart_required and s.status == "Running"
    # A (cold, on the test driver) move boots it on the other node with what was plugged.
    await send(stack.nc, c.MigrateVM(name="grow", target_node="node-b"))
    s = await until(stack, lambda s: s.node == "node-b" and s.status == "Running")
    vcpu = ET.fromstring(await other.hv.xml("default_grow")).find("vcpu")
    assert vcpu is not None and (vcpu.get("current"), vcpu.text) == ("2", "4")
    assert await worker.hv.domains() == {}

    seen = len(await stack.kinds("grow"))
    await send(stack.nc, sized(2, "2Gi"))
    s = await until(stack, lambda s: s.restart_required)
    history = [r.envelope.data for r in await stack.store.read(Ref.vm("grow"))][seen:]
    assert [type(e).__name__ for e in history] == [
        "VMSpecChanged", "HotMemoryChangeRequested", "HotChangeFailed"]  # fmt: skip
    assert history[2] == m.HotChangeFailed(
        resource="memory", node="node-b", reason="libvirt: this function is not supported by the "
        "connection driver: virDomainUpdateDeviceFlags")  # fmt: skip
    [restart] = [x for x in conditions(s) if x["type"] == "RestartRequired"]
    assert restart["message"] == ("memory updated in template spec. Memory-hotplug failed and is "
                                  "not available for this VM configuration")  # fmt: skip

    first = s.vmi_uid
    await send(stack.nc, c.RestartVM(name="grow", grace_period_seconds=0, force=True))
    s = await until(stack, lambda s: s.vmi_uid not in ("", first) and s.status == "Running")
    assert s.size == m.InstanceSize(sockets=2, max_sockets=8, guest=2 * GI, max_guest=8 * GI)
    assert not s.restart_required


async def test_stage_rollout_leaves_every_change_for_the_next_start(stack: Stack) -> None:
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    kubevirt = {"configuration": {"vmRolloutStrategy": "Stage", "developerConfiguration": {
        "featureGates": ["HostDisk"]}}}  # fmt: skip
    await send(stack.nc, c.ApplyKubeVirt(name="kubevirt", namespace="kubevirt", spec=kubevirt))
    await send(stack.nc, sized(1, "1Gi"))
    s = await stack.until("grow", "Running")
    assert s.size == m.InstanceSize(sockets=1, guest=GI)  # no room to grow
    await send(stack.nc, sized(2, "1Gi"))
    s = await until(stack, lambda s: s.restart_required)
    assert (await stack.kinds("grow"))[-2:] == ["VMSpecChanged", "VMRestartRequired"]
    assert s.restart_message == "a non-live-updatable field was changed in the template spec"
    assert s.sockets_now == 1
