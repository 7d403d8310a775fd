"""The user guide's habit on a real QEMU node with the VM network: `virtctl expose vm NAME --name
NAME-ssh --port 22 --type NodePort`, then ssh to the node's port. The tiny guest's dropbear
answers through 127.0.0.1:<nodePort> (the node worker's listener, forwarding to the VMI's
address); a UDP port reaches the guest's echo the same way; its VMI stopped, the listener stays
but forwards nothing; the Service deleted, the port is closed. The node's listeners are awaited
up to the event that changed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qemustack import QemuStack, qemu_stack
from registry import available, push_disk, registry_server
from test_guest_qemu import BOOT_S, ssh_banner, tiny, udp_echo

from bus.client import send
from events import commands as c
from events.names import Ref
from virtbus.guestdisk import IMAGE

pytestmark = pytest.mark.kvm

NODE, NODE_INDEX = "node-np", 61  # its own VNC/migration port range
VM = "np-guest"
BANNER = b"SSH-2.0-dropbear_2022.83"  # Debian 12's dropbear-bin


@pytest.fixture
async def pstack(
    kvm_host: None, guest_disk: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[QemuStack]:  # fmt: skip
    assert available(), "docker-registry is missing: run `make setup`"
    base = tmp_path_factory.mktemp("np")  # short: the node's unix socket path must fit 108 bytes
    with registry_server(base / "registry") as reg:
        push_disk(reg.url, IMAGE, guest_disk)
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        async with qemu_stack(base, nodes={NODE: NODE_INDEX}, vm_network=True) as st:
            yield st


async def listeners_follow(st: QemuStack, ref: Ref) -> None:
    """The node's listeners agree with `ref`'s latest event."""
    seq = (await st.store.read(ref))[-1].seq
    await asyncio.wait_for(st.workers[NODE].node_ports.caught_up(seq), 30)


async def first_line(port: int) -> bytes:
    """What 127.0.0.1:`port` sends first (b"": the connection was closed at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await asyncio.wait_for(reader.readline(), 30)).strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def node_port_of(st: QemuStack, service: str) -> int:
    code, out, err = await st.virtbus("get", "svc", service, "-o", "json")
    assert code == 0, err
    return int(json.loads(out)["spec"]["ports"][0]["nodePort"])


async def udp_answer(port: int, text: bytes) -> bytes:
    """The answer to `text` sent to 127.0.0.1:`port`, sent again while none comes (UDP's own
    way: the guest's echo, started by cloud-init, may not be up yet)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.setblocking(False)
        for _ in range(30):
            await loop.sock_sendto(peer, text, ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(loop.sock_recv(peer, 1024), 2)
    raise AssertionError(f"no answer through nodePort {port}/UDP")


async def test_ssh_to_the_nodes_port_reaches_the_guest(pstack: QemuStack, tmp_path: Path) -> None:
    user_data = f"#cloud-config\nruncmd:\n- {await udp_echo(tmp_path)}\n"
    await send(pstack.nc, tiny(VM, grace=5, user_data=user_data))
    await send(pstack.nc, c.StartVM(name=VM))
    s = await pstack.until(VM, "Running", within=BOOT_S)
    assert await ssh_banner(s.ip, within=BOOT_S) == BANNER  # the guest's sshd is up

    code, out, err = await pstack.virtbus("expose", "vm", VM, "--name", f"{VM}-ssh", "--port",
                                          "22", "--type", "NodePort")  # fmt: skip
    assert (code, out) == (0, f"Service {VM}-ssh successfully created for vm {VM}\n"), err
    node_port = await node_port_of(pstack, f"{VM}-ssh")
    service = Ref("service", "default", f"{VM}-ssh")
    await listeners_follow(pstack, service)
    assert await first_line(node_port) == BANNER
    # UDP: the guest's echo (tests/support/udpecho.c) on 7, through a NodePort of its own.
    code, out, err = await pstack.virtbus("expose", "vm", VM, "--name", f"{VM}-echo", "--port", "7",
                                          "--protocol", "UDP", "--type", "NodePort")  # fmt: skip
    assert code == 0, err
    echo_port = await node_port_of(pstack, f"{VM}-echo")
    await listeners_follow(pstack, Ref("service", "default", f"{VM}-echo"))
    assert await udp_answer(echo_port, b"one") == b"guest:one"

    # The VMI stopped: the Service and its port stay, but nothing is forwarded.
    await send(pstack.nc, c.StopVM(name=VM))
    await pstack.until(VM, "Stopped", within=60)
    await listeners_follow(pstack, Ref.vm(VM))
    assert await first_line(node_port) == b""

    # The Service deleted: the node's port is closed.
    code, out, err = await pstack.virtbus("delete", "svc", f"{VM}-ssh")
    assert (code, out) == (0, f'service "{VM}-ssh" deleted\n'), err
    await listeners_follow(pstack, service)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", node_port)
