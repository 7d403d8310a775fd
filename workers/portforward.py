"""Port-forward sessions, the node's end: a TCP connection (or a connected UDP socket) to a port
of a VM's address, relayed over a `bus.tunnel` pipe (`virtbus port-forward`, and `virtbus ssh`
through it); UDP goes one datagram a frame (`bus.datagrams`).

The node is where the VM network is (workers/vmnet.py: the host routes each VMI address to its
VM's namespace), so the node worker connects to the VMI's address and port and relays both ways;
no port is opened on the node for it. A node without the VM network refuses, saying why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bus.datagrams import Connected, Inbox, relay_datagrams
from bus.store import EventStore
from bus.tunnel import Pipe, SessionOpen, relay_socket
from events.errors import ValidationError
from workers.sessions import Body, running_here

CONNECT_S = 10.0
PROTOCOLS = ("tcp", "udp")


class PortForwards:
    def __init__(self, store: EventStore, *, node: str, vm_network: bool) -> None:
        self.store = store
        self.node = node
        self.vm_network = vm_network

    async def open(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        port, protocol = req.params.get("port"), req.params.get("protocol", "tcp")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValidationError(f"port: {port!r} is not a port (1-65535)")
        if protocol not in PROTOCOLS:
            raise ValidationError(f"protocol: {protocol!r} is not tcp or udp")
        s = await running_here(self.store, req, node=self.node)
        if not s.ip:
            raise ValidationError(f'VirtualMachineInstance "{req.name}" has no address yet')
        if not self.vm_network:
            raise ValidationError(f"node {self.node} has no VM network: {s.ip} cannot be reached "
                                  "there (QEMU nodes with --vm-network)")  # fmt: skip
        if protocol == "udp":
            return await self._udp(s.ip, port)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(s.ip, port), CONNECT_S)
        except (OSError, TimeoutError) as err:
            raise ValidationError(f"cannot connect to {req.name} ({s.ip}) port {port}: "
                                  f"{err or 'timed out'}") from err  # fmt: skip

        async def body(pipe: Pipe) -> None:
            await relay_socket(pipe, reader, writer)

        return {"address": s.ip, "port": port}, body

    async def _udp(self, ip: str, port: int) -> tuple[dict[str, Any], Body]:
        """A UDP socket connected to the VMI's `ip` and `port`: no handshake, so nothing to
        refuse here; the guest's "port unreachable" ends the session instead."""
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: Connected(inbox),
                                                           remote_addr=(ip, port))  # fmt: skip

        async def body(pipe: Pipe) -> None:
            try:
                await relay_datagrams(pipe, inbox, send=transport.sendto)
            finally:
                transport.close()
                if inbox.reason:
                    await pipe.close(inbox.reason)

        return {"address": ip, "port": port, "protocol": "udp"}, body
