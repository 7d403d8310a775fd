"""CPU hotplug into the tiny guest on a real QEMU node: a `patch` of the running VM's sockets
(KubeVirt's LiveUpdate rollout, the default) is plugged live, and the guest sees the new CPU.

The stack, guest and console are test_guest_qemu.py's; the guest is read through `virtbus
console`, as a user would.
"""

from __future__ import annotations

import time

import pytest
from qemustack import QemuStack
from test_guest_qemu import BOOT_S, gstack, logged_in, tiny

from bus.client import send
from events import model as m
from events.render import vmi_object

pytestmark = pytest.mark.kvm
__all__ = ["gstack"]  # the fixture, used by name


async def test_a_cpu_socket_plugged_into_the_running_guest(gstack: QemuStack) -> None:
    await send(gstack.nc, tiny("hotcpu", strategy="Always"))
    async with logged_in(gstack, "hotcpu") as con:
        s = await gstack.state("hotcpu")
        assert s.size == m.InstanceSize(sockets=1, max_sockets=4, guest=128 << 20)
        await con.type("cat /sys/devices/system/cpu/present /sys/devices/system/cpu/online\r")
        await con.expect(b"\r\n0\r\n0\r\n", within=30)
        grown = tiny("hotcpu", strategy="Always")
        grown.spec["template"]["spec"]["domain"]["cpu"] = {"sockets": 2}
        seen = len(await gstack.events("hotcpu"))
        t0 = time.monotonic()
        out = await send(gstack.nc, grown)
        assert out.events == ["io.virtbus.vm.spec_changed.v1"]
        after = await gstack.until_event("hotcpu", m.HotVCPUChanged, after=seen, within=60)
        print(f"apply -> HotVCPUChanged: {time.monotonic() - t0:.2f}s")
        assert [type(e).__name__ for e in after if type(e).__name__[:3] in ("Hot", "VMS")] == [
            "VMSpecChanged", "HotVCPUChangeRequested", "HotVCPUChanged"]  # fmt: skip
        # The guest got it: ACPI adds cpu1, which the guest brings online.
        await con.type("while [ ! -e /sys/devices/system/cpu/cpu1/online ]; do sleep 0.2; done; "
                       "echo 1 > /sys/devices/system/cpu/cpu1/online; cat /sys/devices/system/"
                       "cpu/present /sys/devices/system/cpu/online; echo cpu'-'on\r")  # fmt: skip
        await con.expect(b"0-1\r\n0-1\r\ncpu-on", within=BOOT_S)
    s = await gstack.state("hotcpu")
    vmi = vmi_object(s)
    assert vmi is not None and vmi["status"]["currentCPUTopology"] == {
        "sockets": 2, "cores": 1, "threads": 1}  # fmt: skip
    assert (s.status, s.restart_required) == ("Running", False)
