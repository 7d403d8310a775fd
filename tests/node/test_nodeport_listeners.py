"""A node's nodePort listeners (workers/nodeports.py) forwarding for real, without QEMU: the
"VMI address" is 127.0.0.1, where a TCP and a UDP echo stand in for the guest. The Services' and
VMs' folds are set as the log would make them; each change is followed by the listeners' sync.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from msgspec.structs import replace

from bus.store import EventStore
from events.services import ServiceState
from events.state import RUNNING, VMState
from workers.nodeports import NodePorts

SVC, VM = "virt.service.default.echo", "virt.vm.default.guest"


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data.upper(), addr)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


def free_ports(n: int) -> list[int]:
    """`n` ports nothing listens on now (the kernel's picks, given back at once)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
async def echoes() -> AsyncIterator[tuple[int, int]]:
    """A TCP and a UDP echo on 127.0.0.1 (answering in capitals): their ports."""
    tcp = await asyncio.start_server(_echo, "127.0.0.1", 0)
    udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _Echo, local_addr=("127.0.0.1", 0)
    )
    try:
        yield tcp.sockets[0].getsockname()[1], udp.get_extra_info("sockname")[1]
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()


def service(ports: list[dict[str, Any]]) -> ServiceState:
    return ServiceState(namespace="default", name="echo", version=1, exists=True, vm="guest",
                        spec={"type": "NodePort", "ports": ports},
                        created=datetime(2024, 1, 1, tzinfo=UTC))  # fmt: skip


async def tcp_round(port: int, text: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(text)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def closed_at_once(port: int) -> bytes:
    """What a connection that sends nothing reads (b"": closed by the node at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def udp_round(port: int, text: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.setblocking(False)
        await loop.sock_sendto(peer, text, ("127.0.0.1", port))
        return await asyncio.wait_for(loop.sock_recv(peer, 1024), 10)


async def test_listeners_forward_tcp_and_udp_and_follow_the_vmi_and_the_service(
    echoes: tuple[int, int],
) -> None:
    tcp_target, udp_target = echoes
    tcp_port, udp_port = free_ports(2)
    proxy = NodePorts(cast(EventStore, None), node="node-t", vm_network=True)
    proxy.services[SVC] = service([
        {"port": 22, "targetPort": tcp_target, "protocol": "TCP", "nodePort": tcp_port},
        {"port": 7, "targetPort": udp_target, "protocol": "UDP", "nodePort": udp_port},
    ])  # fmt: skip
    running = VMState(namespace="default", name="guest", exists=True, phase=RUNNING,
                      ip="127.0.0.1")  # fmt: skip
    proxy.vms[VM] = running
    try:
        await proxy.sync()
        assert sorted(proxy.listeners) == sorted([(tcp_port, "TCP"), (udp_port, "UDP")])
        assert await tcp_round(tcp_port, b"hello") == b"HELLO"
        assert await udp_round(udp_port, b"ping") == b"PING"
        # The VMI stopped: the ports stay, nothing is forwarded.
        proxy.vms[VM] = replace(running, phase="Succeeded", ip="")
        await proxy.sync()
        assert await closed_at_once(tcp_port) == b""
        # Running again: forwarded again, by the same listeners.
        proxy.vms[VM] = running
        await proxy.sync()
        assert await tcp_round(tcp_port, b"again") == b"AGAIN"
        # The Service deleted: the ports are closed.
        proxy.services[SVC] = replace(proxy.services[SVC], exists=False, version=2)
        await proxy.sync()
        assert proxy.listeners == {}
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", tcp_port)
    finally:
        for listener in proxy.listeners.values():
            await listener.close()
