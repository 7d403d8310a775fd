"""`virtbus port-forward` and `virtbus ssh`: reaching a port of a VM over the bus, as virtctl does.

Each local connection (or stdin/stdout with `--stdio`), and each local UDP peer of a `udp/` port,
is relayed through a `portforward` session (`bus.tunnel`; `bus.datagrams` for UDP) to the node
worker running the VM, which connects to the VMI's address on the VM network
(workers/portforward.py): no port is opened on any node. `ssh` runs the system
`ssh` with a ProxyCommand of `virtbus port-forward --stdio`, as `virtctl ssh` does with its
`--local-ssh` mode.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from asyncio import StreamReader, StreamWriter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from nats.aio.client import Client

from bus.client import session
from bus.datagrams import Inbox, relay_datagrams
from bus.tunnel import FRAME, Pipe, connect, relay, relay_socket
from events.errors import ValidationError, VirtbusError
from virtctl.console import running_vmi
from virtctl.portspec import PortSpec

_TARGET = re.compile(
    r"^(?:vm|vmi|virtualmachine|virtualmachineinstance)/([a-z0-9.-]+)(?:/([a-z0-9-]+))?$"
)


def target(text: str, *, namespace: str) -> tuple[str, str]:
    """(name, namespace) of virtctl's `TYPE/NAME[/NAMESPACE]` (TYPE vm or vmi), or its older
    `TYPE/NAME.NAMESPACE`."""
    found = _TARGET.match(text)
    if found is None:
        raise ValidationError(f"target: {text!r} is not TYPE/NAME[/NAMESPACE] (TYPE vm or vmi)")
    if found.group(2):
        return found.group(1), found.group(2)
    name, _, ns = found.group(1).partition(".")
    return name, ns or namespace


async def _open(
    nc: Client, *, node: str, name: str, namespace: str, port: int, protocol: str = "tcp"
) -> tuple[Pipe, dict[str, Any]]:
    return await connect(nc, node=node, kind="portforward", namespace=namespace, name=name,
                         params={"port": port, "protocol": protocol})  # fmt: skip


Opener = Callable[[int, str], Awaitable[Pipe]]


class _UdpPeers(asyncio.DatagramProtocol):
    """One local UDP port: each local peer gets a session of its own (as virtctl opens one
    tunnel per peer), its answers sent back to it; a session that ends is opened anew by the
    peer's next datagram."""

    def __init__(self, open_: Opener, *, remote: int) -> None:
        self.open, self.remote = open_, remote
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[Any, Inbox] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        inbox = self.peers.get(addr)
        if inbox is None:
            inbox = self.peers[addr] = Inbox()
            task = asyncio.create_task(self._peer(addr, inbox), name=f"udp-peer-{addr}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        inbox.put(data)

    async def _peer(self, addr: Any, inbox: Inbox) -> None:
        transport = self.transport
        assert transport is not None
        try:
            pipe = await self.open(self.remote, "udp")
        except VirtbusError as err:
            print(f"error forwarding port udp/{self.remote}: {err.message}", file=sys.stderr)
            self.peers.pop(addr, None)  # its datagrams are dropped, as the network would
            return
        try:
            await relay_datagrams(pipe, inbox, send=lambda d: transport.sendto(d, addr))
        finally:
            self.peers.pop(addr, None)
            await pipe.close("the local peer went quiet")

    async def close(self) -> None:
        for inbox in self.peers.values():
            inbox.close("the forwarder stopped")
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def forward(url: str, *, name: str, namespace: str, ports: list[PortSpec],
                  address: str = "127.0.0.1") -> int:  # fmt: skip
    """Listen on each local port until interrupted; each TCP connection, and each UDP peer, is
    one session."""
    async with session(url) as nc:
        s = await running_vmi(nc, name=name, namespace=namespace)

        async def open_(remote: int, protocol: str) -> Pipe:
            pipe, _ = await _open(nc, node=s.node, name=name, namespace=namespace, port=remote,
                                  protocol=protocol)  # fmt: skip
            return pipe

        def on_client(remote: int) -> Callable[[StreamReader, StreamWriter], Awaitable[None]]:
            async def serve(reader: StreamReader, writer: StreamWriter) -> None:
                try:
                    pipe = await open_(remote, "tcp")
                except VirtbusError as err:
                    print(f"error forwarding port {remote}: {err.message}", file=sys.stderr)
                    writer.close()
                    return
                try:
                    await relay_socket(pipe, reader, writer)
                finally:
                    await pipe.close("the local connection ended")

            return serve

        servers, udp = [], []
        loop = asyncio.get_running_loop()
        try:
            for spec in ports:
                if spec.protocol == "udp":
                    transport, peers = await loop.create_datagram_endpoint(
                        partial(_UdpPeers, open_, remote=spec.remote),
                        local_addr=(address, spec.local),
                    )
                    udp.append((transport, peers))
                    bound = transport.get_extra_info("sockname")[1]
                    print(f"Forwarding from {address}:{bound} -> {spec.remote} (udp)", flush=True)
                    continue
                server = await asyncio.start_server(on_client(spec.remote), address, spec.local)
                servers.append(server)
                bound = server.sockets[0].getsockname()[1]
                print(f"Forwarding from {address}:{bound} -> {spec.remote}", flush=True)
            await asyncio.gather(*(srv.serve_forever() for srv in servers), asyncio.Future())
        finally:
            for srv in servers:
                srv.close()
            for transport, peers in udp:
                transport.close()
                await peers.close()
    return 0


async def stdio(url: str, *, name: str, namespace: str, port: int) -> int:
    """One session on stdin and stdout (an ssh ProxyCommand)."""
    async with session(url) as nc:
        s = await running_vmi(nc, name=name, namespace=namespace)
        pipe, _ = await _open(nc, node=s.node, name=name, namespace=namespace, port=port)
        loop = asyncio.get_running_loop()
        stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

        async def read() -> bytes:
            return await loop.run_in_executor(None, os.read, stdin, FRAME)

        async def write(data: bytes) -> None:
            await loop.run_in_executor(None, os.write, stdout, data)

        try:
            await relay(pipe, read=read, write=write)
        finally:
            await pipe.close("the client left")
    return 0


def _through_bus(tool: str, *, name: str, namespace: str, port: int, identity: str | None,
                 known_hosts: str, local_opts: list[str], server: str) -> list[str]:  # fmt: skip
    """ssh's or scp's options: its ProxyCommand this CLI's `port-forward --stdio`."""
    proxy = [sys.executable, "-m", "virtbus", "port-forward", "--stdio", "--server", server,
             "-n", namespace, f"vm/{name}", str(port)]  # fmt: skip
    argv = [tool, "-o", f"ProxyCommand={shlex.join(proxy)}",
            "-o", f"HostKeyAlias=vm.{name}.{namespace}",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            *local_opts]  # fmt: skip
    return argv + (["-i", identity] if identity else [])


def ssh_argv(*, name: str, namespace: str, user: str, port: int, identity: str | None,
             command: str | None, known_hosts: str, local_opts: list[str],
             server: str) -> list[str]:  # fmt: skip
    """The system ssh's command line, its ProxyCommand this CLI's `port-forward --stdio`."""
    argv = _through_bus("ssh", name=name, namespace=namespace, port=port, identity=identity,
                        known_hosts=known_hosts, local_opts=local_opts, server=server)  # fmt: skip
    argv += ["-l", user, f"vm.{name}.{namespace}"]
    return argv + ([command] if command else [])


# [USER@]vm/NAME[/NAMESPACE]:PATH (`vmi/` and the long kinds too): user, target, path
_REMOTE = re.compile(
    r"^(?:([^@/:]+)@)?((?:vm|vmi|virtualmachine|virtualmachineinstance)/[^:]+):(.*)$"
)


def scp_argv(*, source: str, destination: str, namespace: str, user: str, port: int,
             identity: str | None, recursive: bool, known_hosts: str, local_opts: list[str],
             server: str) -> list[str]:  # fmt: skip
    """The system scp's command line for virtctl's `scp SRC DST`: exactly one of them the VM's,
    `[USER@]vm/NAME[/NAMESPACE]:PATH`, the other a local path."""
    found = [_REMOTE.match(source), _REMOTE.match(destination)]
    if sum(f is not None for f in found) != 1:
        raise ValidationError(
            f"scp: one of {source!r} and {destination!r} must be [USER@]vm/NAME[/NAMESPACE]:PATH "
            "and the other a local path"
        )
    remote = next(f for f in found if f is not None)
    name, ns = target(remote.group(2), namespace=namespace)
    there = f"{remote.group(1) or user}@vm.{name}.{ns}:{remote.group(3)}"
    argv = _through_bus("scp", name=name, namespace=ns, port=port, identity=identity,
                        known_hosts=known_hosts, local_opts=local_opts, server=server)  # fmt: skip
    argv += ["-P", str(port)] + (["-r"] if recursive else [])
    return argv + ([there, destination] if found[0] else [source, there])
