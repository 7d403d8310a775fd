"""The VM network on real QEMU nodes: tiny guests reach each other at their VMI addresses, on one
node and across two nodes of this machine, and the host reaches every one; a guest with the
`bridge` binding holds its VMI address itself, given by DHCP.

Each VM's namespace is routed from the host (`workers/vmnet.py`): a guest's connection to another
VMI address leaves its namespace NATed behind its own address, crosses the host's routing table,
and enters the other's namespace, forwarded inward to that guest (or, bridged, routed to it).
Checked from inside a guest (busybox `nc` through `virtbus console`) and from the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qemustack import qemu_stack
from registry import push_disk, registry_server
from test_guest_qemu import BOOT_S, ssh_banner, tiny
from test_guestdata_qemu import shell

from bus.client import send
from events import commands as c
from virtbus.guestdisk import IMAGE

pytestmark = pytest.mark.kvm

NODES = {"node-v": 59, "node-w": 60}  # port ranges of their own, away from the other KVM tests
BANNER = b"SSH-2.0-dropbear_2022.83"  # Debian 12's dropbear-bin


async def test_guests_reach_each_other_on_one_node_and_across_nodes(
    kvm_host: None, guest_disk: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    base = tmp_path_factory.mktemp("vn")  # short: the node's unix socket path must fit 108 bytes
    with registry_server(base / "registry") as reg:
        push_disk(reg.url, IMAGE, guest_disk)
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        async with qemu_stack(base, nodes=NODES, vm_network=True) as st:
            vms = ("net-a", "net-b", "net-c")
            for vm in vms:  # three guests on two nodes: two share one; net-b is bridged
                binding = "bridge" if vm == "net-b" else "masquerade"
                await send(st.nc, tiny(vm, strategy="Always", binding=binding))  # runs once applied
            states = {vm: await st.until(vm, "Running", within=BOOT_S) for vm in vms}
            where = {vm: s.node for vm, s in states.items()}
            ip = {vm: s.ip for vm, s in states.items()}
            assert len(set(where.values())) == 2, where  # the scheduler spreads them
            assert len(set(ip.values())) == 3, ip
            [(x, near)] = [(a, b) for a in vms for b in vms if a < b and where[a] == where[b]]
            [far] = [v for v in vms if where[v] != where[x]]
            for vm in vms:  # the host reaches each guest's sshd at its VMI address
                assert await ssh_banner(ip[vm], within=BOOT_S) == BANNER
            # The bridged guest holds its VMI address itself, in the pool's /16, by DHCP.
            own = f"has-{ip['net-b']}/16\r\ndefault via 10.244.0.1 dev eth0"
            await shell(st, "ip -4 -o addr show eth0 | cut -d' ' -f7 | sed s/^/has''-/",
                        "ip route | grep def'ault'", vm="net-b", expect=own.encode())  # fmt: skip
            for other in (near, far):  # and a guest reaches the others', on its node and not
                # (the quotes keep the echoed command line from matching)
                await shell(st, f"nc -w 5 {ip[other]} 22 </dev/null | head -n1 | sed s/^/got''-/",
                            expect=b"got-" + BANNER, vm=x)  # fmt: skip
            for vm in vms:
                await send(st.nc, c.StopVM(name=vm))
            for vm in vms:
                await st.until(vm, "Stopped", within=120)
