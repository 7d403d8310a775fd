"""A simulated node: speaks the worker's side of the bus contract with no hypervisor behind it.

It registers, heartbeats, consumes its node's work items and appends the observations a real
worker would (launcher created, domain defined and started, stopped, paused, volume attached...),
through the same public event store. The control-plane tests and `virtbus bench control` drive the
orchestrator with it; the real node worker lives in `workers/`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue

from bus.pulling import Puller
from bus.store import EventStore
from bus.telemetry import add_process_args, serve
from events import model as m
from events import work as w
from events.envelope import encode
from events.errors import VirtbusError
from events.names import HEARTBEAT_BUCKET, WORK_STREAM, Ref, node_work_filter
from events.nodes import Heartbeat

log = logging.getLogger("virtbus.simnode")
HEARTBEAT_S = 0.5


class SimNode:
    def __init__(
        self, nc: Client, name: str, *, cpus: int = 8, memory_bytes: int = 16 << 30,
        labels: dict[str, str] | None = None, store: EventStore | None = None,
    ) -> None:  # fmt: skip
        """`store`: another simulated node's, to share its append connection (one process
        simulating many nodes need not hold a connection for each)."""
        self.nc = nc
        self.name = name
        self.cpus = cpus
        self.memory_bytes = memory_bytes
        self.labels = labels or {}
        source = f"/virtbus/node/{name}"
        self.store = store.sibling(source=source) if store else EventStore(nc, source=source)
        self.work: list[w.Work] = []  # every item received, in order
        self.heartbeating = True
        self.heartbeat_s = HEARTBEAT_S
        self._kv: KeyValue | None = None
        self.auto_start = True  # answer Start work with a running domain
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> SimNode:
        head = await self.store.head(Ref.node(self.name), fresh=True)
        registered = m.NodeRegistered(
            hypervisor="simulated", libvirt_uri="sim://", cpus=self.cpus,
            memory_bytes=self.memory_bytes, labels=self.labels, pods="process",
        )  # fmt: skip
        await self.store.append(Ref.node(self.name), [registered], expected_version=head.version)
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name=f"simnode-{self.name}-heartbeat"),
            asyncio.create_task(self._consume(), name=f"simnode-{self.name}-work"),
        ]
        return self

    async def close(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _beat(self) -> None:
        if self._kv is None:  # looked up once: each lookup is a stream info request
            self._kv = await self.nc.jetstream().key_value(HEARTBEAT_BUCKET)
        await self._kv.put(self.name, encode(Heartbeat(at=time.time())))

    async def _heartbeats(self) -> None:
        while not self._stop.is_set():
            if self.heartbeating:
                await self._beat()
            await asyncio.sleep(self.heartbeat_s)

    async def _consume(self) -> None:
        js = self.nc.jetstream()
        # (kept as the worker's: under load on a cluster a pull fails now and then, and a loop
        # that died of it took no more work)
        puller = Puller(lambda: js.pull_subscribe(
            node_work_filter(self.name), durable=f"sim-{self.name}", stream=WORK_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
        ), stop=self._stop, what="work")  # fmt: skip
        try:
            while not self._stop.is_set():
                msgs = await puller.fetch(50)
                by_vm: dict[str, list[Msg]] = {}
                for msg in msgs:  # one VM's work in order, different VMs side by side
                    by_vm.setdefault(msg.subject, []).append(msg)
                await asyncio.gather(*(self._in_order(group) for group in by_vm.values()))
        finally:
            await puller.close()

    async def _in_order(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            item = w.WORK_DECODER.decode(msg.data)
            self.store.heads.took(item)
            self.work.append(item)
            try:
                await self._do(item)
            except VirtbusError as err:  # the bus failed the report: the item comes again
                log.warning("%s: %s on %s failed: %s", self.name, type(item).__name__,
                            item.name, err)  # fmt: skip
                await msg.nak(delay=1)
                return  # its VM's later items wait for it (they come again too)
            await msg.ack()

    async def _do(self, item: w.Work) -> None:
        n = self.name
        match item:
            case w.Start() if self.auto_start:
                pod = f"virt-launcher-{item.name}-{item.vmi_uid[:5]}"
                await self.observe(item.ref, [
                    m.LauncherCreated(node=n, pod=pod), m.DomainDefined(node=n),
                    m.DomainStarted(node=n),
                ])  # fmt: skip
            case w.Stop():
                await self.observe(item.ref, [m.DomainStopped(node=n, reason="shutdown")])
            case w.Pause():
                await self.observe(item.ref, [m.DomainPaused(node=n)])
            case w.Unpause():
                await self.observe(item.ref, [m.DomainResumed(node=n)])
            case w.AttachVolume():
                await self.observe(item.ref, [m.VolumeAttached(volume=item.volume_name, node=n)])
            case w.DetachVolume():
                await self.observe(item.ref, [m.VolumeDetached(volume=item.volume_name, node=n)])
            case w.Resize():  # plugged as asked, as a QEMU node does
                plugged: list[m.Event] = [m.HotVCPUChanged(sockets=item.sockets, node=n)]
                plugged = plugged if item.sockets else []
                if item.guest:
                    plugged.append(m.HotMemoryChanged(guest=item.guest, node=n))
                await self.observe(item.ref, plugged)

    async def observe(self, ref: Ref, events: Sequence[m.Event]) -> None:
        """Append what this node saw happen to `ref`."""
        await self.store.append_fact(ref, events)

    async def crash(self, ref: Ref, reason: str = "crashed") -> None:
        await self.observe(ref, [m.DomainStopped(node=self.name, reason=reason)])


async def _serve(args: argparse.Namespace) -> None:
    async def body(nc: Client, stop: asyncio.Event) -> None:
        shared = EventStore(nc, source="/virtbus/node")
        size = {"cpus": args.cpus, "memory_bytes": args.memory_bytes}
        sims = [SimNode(nc, f"{args.prefix}-{k}", store=shared, **size) for k in range(args.count)]
        for sim in sims:
            sim.heartbeat_s = args.heartbeat_s
        try:
            for sim in sims:
                await sim.start()
            print("ready", flush=True)
            await stop.wait()
        finally:
            for sim in sims:
                await sim.close()

    await serve(args, name="virtbus-simnodes", body=body)


def main() -> None:
    """`python -m bench.simnode`: simulated nodes in a process of their own, so a
    benchmark loads the orchestrator's process the way real nodes would, from outside."""
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.simnode")
    add_process_args(parser)  # --server, --creds, --tls-ca as every virtbus process takes them
    parser.add_argument("--prefix", default="sim-node")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=8)
    parser.add_argument("--memory-bytes", type=int, default=16 << 30)
    parser.add_argument("--heartbeat-s", type=float, default=HEARTBEAT_S, help="between beats")
    uvloop.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
