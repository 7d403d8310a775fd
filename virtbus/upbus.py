"""The bus `virtbus up` runs itself: one nats-server, or with `--cluster N` a JetStream cluster of
N on loopback (`bus/cluster.py`), under the same trust either way.

A server that exits is started again (same port, same data dir) after a back-off. A cluster
member rejoins and catches up while the others, having elected new leaders, carry on; the stack
ends only when a majority is gone at once, when nothing can be written any more. A single server
is the stack's one point of failure: while it is down nothing is written, and every part waits
for it (their connections try its URL again); once back on its store, they carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bus.cluster import NatsCluster, until_ready
from bus.connect import Access, connect
from bus.server import NatsServer
from bus.trust import Trust
from events.errors import ValidationError
from virtbus.supervise import Backoff

Say = Callable[[str], None]


class OwnedBus:
    """The servers `virtbus up` started, their URLs, and their lives watched."""

    def __init__(self, servers: list[NatsServer], *, clustered: bool) -> None:
        self.servers = servers
        self.clustered = clustered

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated: what every client of the stack is given."""
        return ",".join(s.url for s in self.servers)

    def describe(self) -> list[str]:
        """One line per server: its name, pid, client URL and data dir."""
        if not self.clustered:
            s = self.servers[0]
            return [f"nats-server: pid {s.pid}, {s.url}, data in {s.data_dir}"]
        return [f"nats-server {_name(s)}: pid {s.pid}, {s.url}, data in {s.data_dir}"
                for s in self.servers]  # fmt: skip

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def until_lost(self, stop: asyncio.Event, *, say: Say) -> str:
        """Until `stop` (""), or until the bus is lost (why): a cluster's majority is down. A
        server that exits is started again meanwhile."""
        for server in self.servers:  # its clients were given this port: it comes back on it
            server.port = urlsplit(server.url).port or server.port
        down: set[str] = set()
        lost = asyncio.Event()
        keep = functools.partial(self._keep, stop=stop, down=down, lost=lost, say=say)
        keepers = [asyncio.create_task(keep(s), name=f"up-nats-server-{_name(s)}")
                   for s in self.servers]  # fmt: skip
        try:
            await lost.wait()
        finally:
            for k in keepers:
                k.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        return (f"nats-servers {', '.join(sorted(down))} exited: fewer than a majority of the "
                f"cluster's {len(self.servers)} left, the stack stops")  # fmt: skip

    async def _keep(
        self, server: NatsServer, *, stop: asyncio.Event, down: set[str], lost: asyncio.Event,
        say: Say,
    ) -> None:  # fmt: skip
        name, backoff, loop = _name(server), Backoff(), asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            code = await server.exited()
            if stop.is_set():
                return
            down.add(name)
            if self.clustered and len(down) * 2 >= len(self.servers):
                lost.set()
                return
            delay = backoff.next(ran_s=loop.time() - started)
            meanwhile = (
                f"the cluster carries on with {len(self.servers) - len(down)} of "
                f"{len(self.servers)}" if self.clustered
                else "nothing is written until it is back, and every part waits for it"
            )  # fmt: skip
            say(f"{_label(server)}: exited with code {code}; {meanwhile}; starting it again in "
                f"{delay:.0f}s (restart {backoff.restarts})")  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            try:
                await server.start()
            except Exception as err:  # its log says why; the next round tries again
                say(f"{_label(server)}: did not start again: {err}")
                continue
            down.discard(name)
            say(f"{_label(server)}: running again (pid {server.pid}, {server.url})")


def _name(server: NatsServer) -> str:
    return server.cluster.server_name if server.cluster else "n1"


def _label(server: NatsServer) -> str:
    """How `virtbus up` names a server in what it says: `nats-server n2`, or the one."""
    return f"nats-server {_name(server)}" if server.cluster else "nats-server"


def replicas_for(*, cluster: int, replicas: int | None, external: bool) -> int:
    """How many copies of each stream the stack provisions: `replicas` if given, else one per
    server of the cluster it runs (at most JetStream's five). What its own bus cannot hold is
    refused before anything starts; an external bus's server judges for itself."""
    if replicas is None:
        return min(cluster, 5) if cluster else 1
    if not external:
        held = cluster or 1
        if replicas > held:
            where = (
                f"--cluster {cluster} runs {cluster} servers, one copy each at most"
                if cluster
                else "a single server holds one copy: give --cluster N"
            )
            raise ValidationError(
                f"replicas: {replicas} copies of each stream asked, but {where}", field="replicas"
            )
    return replicas


async def start_bus(
    data_dir: Path, *, trust: Trust, port: int, cluster: int, sync_always: bool,
    mutual_tls: bool, admin: Access,
) -> OwnedBus:  # fmt: skip
    """Start the stack's own bus and wait until it answers (a cluster: has elected a JetStream
    meta leader)."""
    if not cluster:
        single = NatsServer(data_dir=data_dir, port=port, sync_always=sync_always, trust=trust,
                            mutual_tls=mutual_tls)  # fmt: skip
        await single.start()
        return OwnedBus([single], clustered=False)
    group = NatsCluster(data_dir=data_dir, size=cluster, trust=trust, sync_always=sync_always,
                        mutual_tls=mutual_tls, port=port)  # fmt: skip
    await group.start()
    bus = OwnedBus(group.servers, clustered=True)
    try:
        nc = await connect(bus.url, name="virtbus-up-ready", access=admin)
        try:
            await until_ready(nc)
        finally:
            await nc.close()
    except BaseException:
        await bus.stop()
        raise
    return bus
