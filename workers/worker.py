"""virt-handler: one per node. Registers and heartbeats the node, consumes its work, reports
what libvirt tells it.

Work for one VM is handled in order, different VMs in parallel; each item goes to the part it is
about (`lifecycle`, `migration`, `snapshots`, `volumestore`/`volumemove`), which the worker builds
with exactly what it uses (`node_context`). On start the worker reconciles libvirt and the
launchers with the log (`sync`), like virt-handler's sync loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue

from bus.connect import identity
from bus.pulling import Puller
from bus.store import EventStore
from bus.telemetry import bound, traced
from bus.vms import VMRepository
from events import model as m
from events import work as w
from events.envelope import encode
from events.errors import VirtbusError
from events.names import HEARTBEAT_BUCKET, WORK_STREAM, Ref, node_work_filter
from events.nodes import Heartbeat
from workers import metrics
from workers.dumps import MemoryDumps
from workers.failures import failure_of
from workers.guestagent import GuestAgent
from workers.hypervisor import DomainEvent, Hypervisor, ref_of_domain
from workers.imagecache import ImageCache
from workers.k8spods import KubernetesPods
from workers.lifecycle import ForcedStops, Lifecycle
from workers.migration import Migrations
from workers.node_context import Domains, Launchers, MigrationSettings, NodeContext
from workers.nodeports import NodePorts
from workers.pods import ExitHandler, PodDriver, ProcessPods
from workers.populate import Populator
from workers.portforward import PortForwards
from workers.registry import Registries
from workers.screens import Screens
from workers.sessions import Sessions
from workers.snapshots import NodeSnapshots, Snapshotting
from workers.sync import reconcile
from workers.upload import Uploads
from workers.vmnet import NetworkError, vm_network_of
from workers.vnc import Consoles
from workers.volumemove import Mover
from workers.volumes import Volumes
from workers.volumestore import VolumeStore

log = logging.getLogger("virtbus.worker")
KEEPALIVE_S = 5.0
REBOOT_COALESCE_S = 2.0  # REBOOT events of one domain this close together are one reboot
# A work item held this long without a keepalive is redelivered: how long a crashed worker's
# item waits for the restarted one (two keepalives may be missed before that).
ACK_WAIT_S = 15.0


class Worker:
    def __init__(
        self, nc: Client, *, node: str, uri: str, data_dir: Path, host_root: Path | None = None,
        labels: dict[str, str] | None = None, heartbeat_s: float = 2.0, pods: str = "process",
        kube_url: str | None = None, registries: Registries | None = None,
        migration: MigrationSettings | None = None, hypervisor: Hypervisor | None = None,
        vm_network: bool = False,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.node = node
        self.uri = uri
        self.labels = labels or {}
        self.heartbeat_s = heartbeat_s
        self._kv: KeyValue | None = None
        self.pod_driver = pods
        # On a secured bus the server lets a node append only under its own name: its name ends
        # every subject it writes, and the log attributes its observations to it.
        self.store = EventStore(nc, source=f"/virtbus/node/{node}", writer=identity(nc) or "")
        self.hv = hypervisor or Hypervisor(uri)
        network = vm_network_of(data_dir, node=node) if vm_network else None
        self.ctx = NodeContext(node=node, hv=self.hv, store=self.store, observe=self.observe,
                               migration=migration or MigrationSettings(),
                               network=network)  # fmt: skip

        def driver(on_exit: ExitHandler) -> PodDriver:
            if pods == "kubernetes":
                return KubernetesPods(on_exit, node=node, kube_url=kube_url)
            return ProcessPods(on_exit)

        self.launchers = Launchers(self.ctx, driver=driver)
        images = ImageCache(data_dir, registries or Registries.from_env(), node=node)
        self.volumes = Volumes(data_dir, host_root=host_root, images=images)
        self.domains = Domains(self.volumes)
        self.forced = ForcedStops(self._stop_forced, node=node)
        self._crashes: dict[str, str] = {}  # domain -> how its guest crashed, until it stops
        self._reboots: dict[str, float] = {}  # domain -> when its last reboot event came
        self.lifecycle = Lifecycle(
            self.ctx, launchers=self.launchers, domains=self.domains, forced=self.forced
        )
        self.migrations = Migrations(self.ctx, launchers=self.launchers, domains=self.domains)
        self.snapshots = NodeSnapshots(data_dir, self.volumes)
        self.snapshotting = Snapshotting(self.ctx, snapshots=self.snapshots)
        self.volume_store = VolumeStore(
            self.store, node=node, root=data_dir,
            fill=Populator(self.store, root=data_dir, images=images).fill,
        )  # fmt: skip
        self.mover = Mover(self.volume_store)
        consoles = Consoles(self.hv, self.store, node=node)
        self.dumps = MemoryDumps(self.ctx, root=self.volumes.root)
        self.sessions = Sessions(nc, node=node, handlers={
            "upload": Uploads(self.volume_store, self.store).open,
            "vnc": consoles.vnc, "console": consoles.console,
            "volume-read": self.mover.serve,
            "portforward": PortForwards(self.store, node=node,
                                        vm_network=self.ctx.network is not None).open,
            "guestagent": GuestAgent(self.hv, self.store, node=node).open,
            "screenshot": Screens(self.hv, self.store, node=node).screenshot,
            "memorydump": self.dumps.serve,
        })  # fmt: skip
        self.node_ports = NodePorts(self.store, node=node, vm_network=network is not None)
        self.malformed = 0
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._vm_tasks: dict[str, asyncio.Task[None]] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.hv.open()
        tasks: list[asyncio.Task[None]] = []
        try:
            host = await self.hv.host()
            self.domains.kvm = host.kvm
            head = await self.store.head(Ref.node(self.node), fresh=True)
            registered = m.NodeRegistered(
                hypervisor="test" if self.uri.startswith("test:") else host.hypervisor.lower(),
                libvirt_uri=self.uri, cpus=host.cpus, memory_bytes=host.memory_bytes,
                kvm=host.kvm, labels=self.labels, pods=self.pod_driver,
                migration_uri=self.uri if host.hypervisor == "QEMU" else "",
            )  # fmt: skip
            await self.store.append(
                Ref.node(self.node), [registered], expected_version=head.version
            )
            await self._beat()
            await self.reconcile()
            await self.volume_store.reconcile()
            tasks = [
                asyncio.create_task(self._heartbeats(stop), name=f"worker-{self.node}-heartbeat"),
                asyncio.create_task(self._domain_events(), name=f"worker-{self.node}-libvirt"),
                asyncio.create_task(self._work(stop), name=f"worker-{self.node}-work"),
                asyncio.create_task(self.sessions.run(stop), name=f"worker-{self.node}-sessions"),
                asyncio.create_task(self.node_ports.run(), name=f"worker-{self.node}-nodeports"),
            ]
            await stop.wait()
        finally:
            await _cancel_all([*tasks, *self._vm_tasks.values(), *self.migrations.tasks,
                               *self.forced.tasks])  # fmt: skip
            await self.launchers.close()
            await self.hv.close()

    async def _beat(self) -> None:
        if self._kv is None:  # looked up once: each lookup is a stream info request
            self._kv = await self.nc.jetstream().key_value(HEARTBEAT_BUCKET)
        await self._kv.put(self.node, encode(Heartbeat(at=time.time())))

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(VirtbusError, TimeoutError):
                await self._beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)

    async def observe(self, ref: Ref, events: Sequence[m.Event], *, together: bool = False) -> None:
        await self.store.append_fact(ref, events, together=together)

    # --- the sync loop ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        await reconcile(self.ctx, launchers=self.launchers, migrations=self.migrations,
                        snapshots=self.snapshots)  # fmt: skip

    # --- work ----------------------------------------------------------------------------------

    async def _work(self, stop: asyncio.Event) -> None:
        self.puller = Puller(lambda: self.nc.jetstream().pull_subscribe(
            node_work_filter(self.node), durable=f"worker-{self.node}", stream=WORK_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                                  max_deliver=20, max_ack_pending=1000),
        ), stop=stop, what="work")  # fmt: skip
        try:
            while not stop.is_set():
                for msg in await self.puller.fetch(100):
                    if self._urgent(msg):
                        continue
                    key = msg.subject.split(".", 3)[3]  # vm.<ns>.<name>: one queue per VM
                    self._queues.setdefault(key, asyncio.Queue()).put_nowait(msg)
                    if key not in self._vm_tasks:
                        self._vm_tasks[key] = asyncio.create_task(
                            self._drain(key), name=f"worker-{self.node}-{key}"
                        )
        finally:
            await self.puller.close()

    def _urgent(self, msg: Msg) -> bool:
        """Work that must not wait behind its VM's queue: taken now, or noted now and queued."""
        try:
            item = w.WORK_DECODER.decode(msg.data)
        except Exception:  # the queue's handler counts and drops it
            return False
        self.forced.arrived(item)
        return self.migrations.urgent(item, msg)

    async def _arrived(self, ref: Ref, dom: str) -> None:
        """A migrated guest runs here now: its address's traffic comes to this node's side."""
        s, _ = await VMRepository(self.store).get(ref)
        if s.ip and self.ctx.network is not None:
            try:
                await self.ctx.network.attach(dom, ip=s.ip)
            except NetworkError as err:
                log.warning("%s: the VM network did not follow the migration: %s", dom, err)

    async def _stop_forced(self, ref: Ref) -> bool:
        return (await VMRepository(self.store).get(ref))[0].stop_force

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while not queue.empty():
                await self._handle(queue.get_nowait())
        finally:
            del self._vm_tasks[key]
            if queue.empty():
                self._queues.pop(key, None)

    async def _handle(self, msg: Msg) -> None:
        try:
            item = w.WORK_DECODER.decode(msg.data)
        except Exception:  # whatever it is, it is not work: count it and drop it
            self.malformed += 1
            metrics.MALFORMED_WORK.labels(self.node).inc()
            await msg.term()
            return
        self.store.heads.took(item)
        action = type(item).__name__
        keepalive = asyncio.create_task(_keep_alive(msg), name=f"keepalive-{item.msg_id}")
        started = time.monotonic()
        trace = (msg.headers or {}).get("traceparent")
        with bound(vm=f"{item.namespace}/{item.name}", node=self.node, work=action), traced(trace):
            try:
                await self.do(item)
            except VirtbusError as err:
                log.warning("%s on %s failed: %s", action, item.name, err)
                keepalive.cancel()
                metrics.WORK.labels(self.node, action, "retry" if err.retryable else "failed").inc()
                await (msg.nak(delay=2) if err.retryable else msg.term())
                return
            except Exception as err:  # a fault nobody foresaw: this item fails, not the node
                log.exception("%s on %s could not be carried out", action, item.name)
                keepalive.cancel()
                metrics.WORK.labels(self.node, action, "failed").inc()
                await self._failed(item, f"{action} failed on {self.node}: "
                                         f"{type(err).__name__}: {err}")  # fmt: skip
                await msg.term()
                return
            finally:
                keepalive.cancel()
            metrics.WORK.labels(self.node, action, "done").inc()
            metrics.WORK_SECONDS.labels(action).observe(time.monotonic() - started)
            await msg.ack()

    async def _failed(self, item: w.Work, reason: str) -> None:
        if (failed := failure_of(item, reason, node=self.node)) is None:
            return
        with contextlib.suppress(VirtbusError):  # the bus away too: the log says nothing more
            await self.observe(failed[0], [failed[1]])

    async def do(self, item: w.Work) -> None:
        try:
            await self._do(item)
        finally:
            self.forced.done(item)

    async def _do(self, item: w.Work) -> None:
        if isinstance(item, w.MoveVolume):
            await self.mover.pull(item)
            return
        if isinstance(item, w.ProvisionVolume | w.RemoveVolume):
            await self.volume_store.do(item)
            return
        s, _ = await VMRepository(self.store).get(item.ref)
        if isinstance(item, w.SnapshotWork):
            await self.snapshotting.do(item, s)
            return
        if isinstance(item, w.MigrationWork):  # addressed to a source or a target
            await self.migrations.do(item, s)
            return
        if s.vmi_uid != item.vmi_uid or s.node != self.node:
            return  # stale: the instance it was for is gone or elsewhere
        if isinstance(item, w.DumpMemory):
            await self.dumps.do(item, s)
            return
        await self.lifecycle.do(item, s)

    # --- what libvirt and the launchers tell us --------------------------------------------------

    async def _domain_events(self) -> None:
        while True:
            ev = await self.hv.events.get()
            try:
                await self._on_domain_event(ev)
            except VirtbusError as err:
                log.warning("reporting %s of %s failed: %s", ev.kind, ev.domain, err)

    async def _on_domain_event(self, ev: DomainEvent) -> None:
        metrics.LIBVIRT_EVENTS.labels(self.node, ev.kind, ev.reason).inc()
        if ev.kind == "reconnected":  # libvirtd restarted: what it did meanwhile told no event
            await self.reconcile()
            return
        if ev.kind == "crashed":  # how the guest crashed: told with the stop that follows
            self._crashes[ev.domain] = ev.reason
            return
        ref = ref_of_domain(ev.domain)
        if ev.kind == "memory" and ref is not None:
            plugged = m.GuestMemoryPlugged(plugged=int(ev.reason) << 10, node=self.node)
            await self.observe(ref, [plugged])
            return
        if ev.kind == "agent" and ref is not None:
            connected = ev.reason == "connected"
            await self.observe(ref, [m.GuestAgentChanged(node=self.node, connected=connected)])
            return
        if ev.kind == "rebooted" and ref is not None:
            # libvirt 9 sends two REBOOT events for one guest reboot (seen here): one recorded.
            now, last = time.monotonic(), self._reboots.get(ev.domain, -REBOOT_COALESCE_S)
            self._reboots[ev.domain] = now
            if now - last >= REBOOT_COALESCE_S and not self.ctx.expectations.met(ev):
                await self.observe(ref, [m.DomainRebooted(node=self.node)])
            return
        if ev.kind not in ("stopped", "suspended", "resumed") or self.ctx.expectations.met(ev):
            return
        if ref is None or ev.reason in ("migrated", "postcopy"):  # a migration's own steps
            if ref is not None and ev.kind == "resumed" and self.ctx.network is not None:
                await self._arrived(ref, ev.domain)
            return
        if ev.kind == "stopped":
            detail = self._crashes.pop(ev.domain, "") if ev.reason == "crashed" else ""
            await self.launchers.remove(ev.domain, running=False)
            stopped = m.DomainStopped(node=self.node, reason=ev.reason, detail=detail)
            await self.observe(ref, [stopped])
            return
        # The QEMU driver resumes every domain it starts (QEMU runs with -S until libvirt starts
        # its CPUs): report only a pause or resume the log lacks.
        s, _ = await VMRepository(self.store).get(ref)
        if s.paused == (ev.kind == "suspended"):
            return
        if ev.kind == "suspended":
            await self.observe(ref, [m.DomainPaused(node=self.node, reason=ev.reason)])
        else:
            await self.observe(ref, [m.DomainResumed(node=self.node, reason=ev.reason)])


async def _cancel_all(tasks: list[asyncio.Task[None]], *, rounds: int = 5) -> None:
    """Cancel and wait, a bounded number of times: a cancellation can be swallowed by a library
    racing it (asyncio.wait_for in 3.11), and shutdown must not hang on that."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=2)
    for t in pending:
        log.warning("%s did not stop when cancelled", t.get_name())
    await asyncio.gather(*(t for t in tasks if t.done()), return_exceptions=True)


async def _keep_alive(msg: Msg) -> None:
    """Tell JetStream a long operation is still going, so the item is not redelivered."""
    while True:
        await asyncio.sleep(KEEPALIVE_S)
        with contextlib.suppress(Exception):
            await msg.in_progress()
