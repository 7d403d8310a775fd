"""A JetStream cluster of nats-servers on loopback: what `virtbus up --cluster N` will run.

NATS's own clustering, not ours: each server is a `NatsServer` with a data dir of its own
(`D/n1`, `D/n2`...), a client port and a route port; the servers dial each other's routes and
elect a JetStream meta leader among themselves. With a trust, the routes are mutual TLS with the
stack's CA (a server without a route certificate from it cannot join) and clients are held to the
operator's identities, as on a single server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from nats.aio.client import Client

from bus.server import NatsServer, Route
from events.errors import BusUnavailable

if TYPE_CHECKING:
    from bus.trust import Trust

CLUSTER_NAME = "virtbus"


def free_ports(count: int) -> list[int]:
    """`count` loopback ports free now (held open together, so they differ), picked below the
    kernel's ephemeral range: until the server binds one, no outgoing connection of any process
    can be given it as its own port (a port the kernel hands out for `bind(0)` can)."""
    low = _ephemeral_low()
    spare = range(max(1024, low - 12_000), low)
    pick = random.SystemRandom().choice
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        tries = 1000 * count
        while len(ports) < count and tries:
            tries -= 1
            port = pick(spare)
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: another
            ports.append(port)
    if len(ports) < count:
        raise BusUnavailable(f"no {count} free ports between {spare.start} and {spare.stop - 1}")
    return ports


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class NatsCluster:
    """`size` servers, one JetStream cluster: `async with NatsCluster(...) as c: c.urls`."""

    def __init__(
        self, *, data_dir: Path, size: int = 3, trust: Trust | None = None,
        sync_always: bool = False, mutual_tls: bool = False, ready_timeout: float = 30,
        port: int = -1,
    ) -> None:  # fmt: skip
        """`port`: n1's client port (-1: a free one, as every other server's)."""
        if size < 1:
            raise ValueError(f"size: a cluster has at least one server, not {size}")
        ports = free_ports(2 * size)
        clients, routes = ports[:size], tuple(ports[size:])
        if port >= 0:
            clients[0] = port
        self.servers = [
            NatsServer(
                data_dir=data_dir / f"n{i + 1}", port=clients[i], sync_always=sync_always,
                trust=trust, mutual_tls=mutual_tls, ready_timeout=ready_timeout,
                cluster=Route(CLUSTER_NAME, f"n{i + 1}", routes[i], routes),
            )
            for i in range(size)
        ]  # fmt: skip

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    async def start(self) -> list[str]:
        """Start every server (together: each waits for its peers' routes) and return their
        client URLs."""
        try:
            await asyncio.gather(*(s.start() for s in self.servers))
        except BaseException:
            await self.stop()
            raise
        return self.urls

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def until_ready(nc: Client, *, within: float = 30) -> None:
    """Until the cluster's JetStream answers (it has elected a meta leader; before that its API
    says 503, or nothing)."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await js.account_info()
            return
        except Exception as err:  # no responders, "temporarily unavailable", a timeout
            if loop.time() > deadline:
                raise BusUnavailable(
                    f"the cluster elected no JetStream leader within {within:g}s: {err}"
                ) from err
            await asyncio.sleep(0.1)
