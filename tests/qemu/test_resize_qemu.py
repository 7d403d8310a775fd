"""CPU and memory hotplug into the tiny guest on a real QEMU node, as KubeVirt users see it: one
`apply` of the running VM with more memory and more CPU sockets (KubeVirt's LiveUpdate rollout,
the default) is plugged live, and the guest itself sees both: MemTotal grows by exactly what was
added (virtio-mem), and the new vCPU comes online with no one typing anything.

The stack, guest and console are test_guest_qemu.py's; the guest is read through `virtbus
console`, and the VMI through `virtbus get vmi -o json`, as a user would.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from qemustack import QemuStack
from test_guest_qemu import Console, gstack, logged_in, tiny

from bus.client import send
from events import model as m

pytestmark = pytest.mark.kvm
__all__ = ["gstack"]  # the fixture, used by name

BOOT_MIB, GROWN_MIB = 1024, 1154  # memory hotplug needs 1Gi; +130Mi spans two 128Mi blocks
# What the guest reports: MemTotal in KiB, the CPUs online and their count. (The quotes keep the
# typed command's echo from matching.)
LOOK = ("echo m't'=$(awk '/^MemTotal/{print $2}' /proc/meminfo) "
        "c=$(cat /sys/devices/system/cpu/online) n=$(nproc) e'n'd")  # fmt: skip
SEEN = re.compile(rb"mt=([0-9]+) c=(\S+) n=([0-9]+) end\r\n")


def sized(name: str, *, memory_mib: int, sockets: int) -> Any:
    vm = tiny(name, strategy="Always")
    domain = vm.spec["template"]["spec"]["domain"]
    domain.pop("resources")
    domain["memory"] = {"guest": f"{memory_mib}Mi"}
    domain["cpu"] = {"sockets": sockets}
    return vm


async def look(con: Console, *, before: str = "") -> tuple[int, str, int]:
    """The guest's MemTotal (KiB), online CPUs and `nproc`, once the shell condition `before`
    holds (the guest plugs what it is given after the host's call returns)."""
    wait = f"i=0; until {before}; do [ $i -ge 600 ] && break; i=$((i+1)); sleep 0.1; done; "
    await con.type(f"{wait if before else ''}{LOOK}\r")
    found = SEEN.search(await con.expect(b" end\r\n", within=90))
    assert found, con.seen
    return int(found[1]), found[2].decode(), int(found[3])


async def test_memory_and_a_socket_plugged_into_the_running_guest_are_seen_by_it(
    gstack: QemuStack,
) -> None:
    await send(gstack.nc, sized("hot", memory_mib=BOOT_MIB, sockets=1))
    async with logged_in(gstack, "hot") as con:
        s = await gstack.state("hot")
        assert s.size == m.InstanceSize(sockets=1, max_sockets=4, guest=BOOT_MIB << 20,
                                        max_guest=4 * BOOT_MIB << 20)  # fmt: skip
        await con.type("ls /sys/bus/virtio/drivers/virtio_mem | grep -c v'irtio'\r")
        await con.expect(b"\r\n1\r\n", within=30)  # the driver has the device
        boot_kib, online, cpus = await look(con)
        assert (online, cpus) == ("0", 1)
        seen = len(await gstack.events("hot"))
        t0 = time.monotonic()
        out = await send(gstack.nc, sized("hot", memory_mib=GROWN_MIB, sockets=2))
        assert out.events == ["io.virtbus.vm.spec_changed.v1"]
        after = await gstack.until_event("hot", m.HotMemoryChanged, after=seen, within=60)
        print(f"apply -> HotMemoryChanged: {time.monotonic() - t0:.2f}s")
        assert [type(e).__name__ for e in after if type(e).__name__[:3] in ("Hot", "VMS")] == [
            "VMSpecChanged", "HotVCPUChangeRequested", "HotMemoryChangeRequested",
            "HotVCPUChanged", "HotMemoryChanged"]  # fmt: skip
        seen = len(await gstack.events("hot"))
        # The guest: virtio-mem plugs 2Mi blocks into 128Mi memory blocks, which the kernel
        # onlines (memhp_default_state=online); only the plugged pages count in MemTotal, so it
        # grows by exactly 130Mi. The new vCPU is onlined by the guest's uevent hook.
        grown = boot_kib + ((GROWN_MIB - BOOT_MIB) << 10)
        t1 = time.monotonic()
        mem = "$(awk '/^MemTotal/{print $2}' /proc/meminfo)"
        taken = await look(con, before=f"[ {mem} -ge {grown} ] && grep -qx 0-1 "
                           "/sys/devices/system/cpu/online")  # fmt: skip
        print(
            f"HotMemoryChanged -> seen in the guest: {time.monotonic() - t1:.2f}s; MemTotal "
            f"{boot_kib} -> {taken[0]} KiB, CPUs online {taken[1]}, nproc {taken[2]}"
        )
        assert taken == (grown, "0-1", 2)
        # The guest's driver said how much it plugged (libvirt's memory-device-size-change),
        # maybe in steps: guestCurrent is that, all of the 130Mi once it is done.
        plugged = 0
        while plugged != (GROWN_MIB - BOOT_MIB) << 20:
            reports = await gstack.until_event("hot", m.GuestMemoryPlugged, after=seen, within=60)
            seen += len(reports)
            plugged = [e.plugged for e in reports if isinstance(e, m.GuestMemoryPlugged)][-1]
    code, text, err = await gstack.virtbus("get", "vmi", "hot", "-o", "json")
    assert code == 0, err
    status = json.loads(text)["status"]
    assert (status["currentCPUTopology"], status["memory"]) == (
        {"sockets": 2, "cores": 1, "threads": 1},
        {"guestAtBoot": "1Gi", "guestCurrent": "1154Mi", "guestRequested": "1154Mi"},
    )
    assert not [c for c in status["conditions"] if c["type"].startswith("Hot")]
    s = await gstack.state("hot")
    assert (s.status, s.restart_required) == ("Running", False)
