"""virt-handler: one per node. Consumes its node's work, drives libvirt, reports what it observes.

Work for one VM is handled in order, different VMs in parallel. Every operation is idempotent: a
redelivered item finds the domain already as wanted and only reports what the log lacks. On start
the worker reconciles libvirt with the log, like virt-handler's sync loop: a domain the log says
should not be here is reported and removed, a VM that should run here and does not is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from bus.reader import fetch_some
from bus.store import EventStore
from bus.telemetry import bound, traced
from bus.vms import VMRepository
from events import model as m
from events import work as w
from events.envelope import encode
from events.errors import HypervisorError, ValidationError, VirtbusError
from events.names import HEARTBEAT_BUCKET, WORK_STREAM, Ref, node_work_filter
from events.nodes import Heartbeat
from events.state import RUNNING, SCHEDULED, SCHEDULING, STOPPING, TERMINATING, VMState
from workers import metrics
from workers.domain import disk_xml_of, hotplug_disk, render_domain
from workers.failures import failure_of
from workers.hypervisor import (
    PAUSED_STATE,
    RUNNING_STATES,
    DomainEvent,
    Hypervisor,
    domain_name,
    ref_of_domain,
)
from workers.imagecache import ImageCache
from workers.k8spods import KubernetesPods
from workers.migration import Migrations
from workers.pods import ProcessPods, pod_name
from workers.registry import Registries
from workers.sessions import Sessions
from workers.snapshots import NodeSnapshots, Snapshotting
from workers.sync import reconcile
from workers.upload import Uploads
from workers.vnc import Consoles
from workers.volumemove import Mover
from workers.volumes import Volumes, VolumeUnavailable
from workers.volumestore import VolumeStore

log = logging.getLogger("virtbus.worker")
KEEPALIVE_S = 5.0
# A work item held this long without a keepalive is redelivered: how long a crashed worker's
# item waits for the restarted one (two keepalives may be missed before that).
ACK_WAIT_S = 15.0
EXPECT_S = 10.0  # how long an event our own call caused may take to arrive


class Worker:
    def __init__(
        self, nc: Client, *, node: str, uri: str, data_dir: Path, host_root: Path | None = None,
        labels: dict[str, str] | None = None, heartbeat_s: float = 2.0, pods: str = "process",
        kube_url: str | None = None, registries: Registries | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.node = node
        self.uri = uri
        self.labels = labels or {}
        self.heartbeat_s = heartbeat_s
        self.pod_driver = pods
        self.store = EventStore(nc, source=f"/virtbus/node/{node}")
        self.hv = Hypervisor(uri)
        self.pods: ProcessPods | KubernetesPods = (
            KubernetesPods(self._launcher_exited, node=node, kube_url=kube_url)
            if pods == "kubernetes" else ProcessPods(self._launcher_exited)
        )  # fmt: skip
        images = ImageCache(data_dir, registries or Registries.from_env(), node=node)
        self.volumes = Volumes(data_dir, host_root=host_root, images=images)
        self.snapshots = NodeSnapshots(data_dir, self.volumes)
        self.snapshotting = Snapshotting(self)
        self.volume_store = VolumeStore(self.store, node=node, root=data_dir)
        consoles = Consoles(self.hv, self.store, node=node)
        self.sessions = Sessions(nc, node=node, handlers={
            "upload": Uploads(self.volume_store, self.store).open,
            "vnc": consoles.vnc, "console": consoles.console,
            "volume-read": Mover(self.volume_store).serve,
        })  # fmt: skip
        self.malformed = 0
        self._expected: dict[str, list[tuple[str, float]]] = {}
        self._pods: dict[str, str] = {}  # domain -> its launcher pod
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._vm_tasks: dict[str, asyncio.Task[None]] = {}
        self.migrations = Migrations(self)

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.hv.open()
        tasks: list[asyncio.Task[None]] = []
        try:
            host = await self.hv.host()
            self.kvm = host.kvm
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
            ]
            await stop.wait()
        finally:
            await _cancel_all([*tasks, *self._vm_tasks.values(), *self.migrations.tasks])
            await self.pods.close()
            await self.hv.close()

    async def _beat(self) -> None:
        kv = await self.nc.jetstream().key_value(HEARTBEAT_BUCKET)
        await kv.put(self.node, encode(Heartbeat(at=time.time())))

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(VirtbusError, TimeoutError):
                await self._beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)

    async def observe(self, ref: Ref, events: Sequence[m.Event]) -> None:
        await self.store.append_fact(ref, events)

    # --- the sync loop ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        await reconcile(self)

    async def _remove(self, dom: str, *, running: bool) -> None:
        if running:
            self._expect(dom, "stopped")
            with contextlib.suppress(HypervisorError):
                await self.hv.destroy(dom)
        with contextlib.suppress(HypervisorError):
            await self.hv.undefine(dom)
        if pod := self._pods.pop(dom, None):
            await self.pods.delete(pod)

    # --- work ----------------------------------------------------------------------------------

    async def _work(self, stop: asyncio.Event) -> None:
        sub = await self.nc.jetstream().pull_subscribe(
            node_work_filter(self.node), durable=f"worker-{self.node}", stream=WORK_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                                  max_deliver=20, max_ack_pending=1000),
        )  # fmt: skip
        try:
            while not stop.is_set():
                for msg in await fetch_some(sub, batch=100, stop=stop, what="work"):
                    if self.migrations.urgent(msg):
                        continue
                    key = msg.subject.split(".", 3)[3]  # vm.<ns>.<name>: one queue per VM
                    self._queues.setdefault(key, asyncio.Queue()).put_nowait(msg)
                    if key not in self._vm_tasks:
                        self._vm_tasks[key] = asyncio.create_task(
                            self._drain(key), name=f"worker-{self.node}-{key}"
                        )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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
        if isinstance(item, w.VolumeData):
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
        match item:
            case w.Start():
                await self._start(item, s)
            case w.Stop():
                await self._stop(item, s)
            case w.Pause():
                if s.phase == RUNNING and not s.paused:
                    self._expect(domain_name(item.ref), "suspended")
                    await self.hv.suspend(domain_name(item.ref))
                    await self.observe(item.ref, [m.DomainPaused(node=self.node)])
            case w.Unpause():
                if s.paused:
                    self._expect(domain_name(item.ref), "resumed")
                    await self.hv.resume(domain_name(item.ref))
                    await self.observe(item.ref, [m.DomainResumed(node=self.node)])
            case w.AttachVolume():
                await self._attach(item, s)
            case w.DetachVolume():
                await self._detach(item, s)

    async def _start(self, item: w.Start, s: VMState) -> None:
        ref, dom = item.ref, domain_name(item.ref)
        if s.status in (STOPPING, TERMINATING) or s.phase not in (SCHEDULING, SCHEDULED):
            return
        state = await self.hv.state(dom)
        if state in RUNNING_STATES or state == PAUSED_STATE:  # started before a crash of ours
            await self.observe(ref, [m.DomainStarted(node=self.node)])
            return

        async def pulled(event: m.ImagePulling | m.ImagePulled) -> None:
            await self.observe(ref, [event])

        try:
            volumes = await self.volumes.resolve(
                item.spec,
                namespace=ref.namespace,
                name=ref.name,
                uid=item.vmi_uid,
                on_pull=pulled,
            )
            xml = render_domain(item.spec, name=ref.name, namespace=ref.namespace,
                                uid=item.vmi_uid, volumes=volumes, kvm=self.kvm)  # fmt: skip
        except VolumeUnavailable as err:
            fail = m.VMStartFailed(reason=err.message, status=err.status, node=self.node)
            await self.observe(ref, [fail])
            return
        except ValidationError as err:
            await self.observe(ref, [m.VMStartFailed(reason=err.message, node=self.node)])
            return
        pod = await self.pods.create(pod_name(ref.name, item.vmi_uid), namespace=ref.namespace)
        self._pods[dom] = pod
        events: list[m.Event] = [m.LauncherCreated(node=self.node, pod=pod)]
        try:
            uuid = await self.hv.define(xml)
            events.append(m.DomainDefined(node=self.node, domain_uuid=uuid))
            self._expect(dom, "started")
            await self.hv.start(dom)
        except HypervisorError as err:
            await self._remove(dom, running=False)
            events.append(m.VMStartFailed(reason=err.message, status="Stopped", node=self.node))
            await self.observe(ref, events)
            return
        events.append(m.DomainStarted(node=self.node))
        await self.observe(ref, events)

    async def _stop(self, item: w.Stop, s: VMState) -> None:
        dom = domain_name(item.ref)
        state = await self.hv.state(dom)
        active = s.phase in (SCHEDULING, SCHEDULED, RUNNING)
        if state is None and dom not in self._pods and not active:
            return  # done already (a second stop queued behind the first): nothing to report
        reason = "shutdown"
        if state in RUNNING_STATES or state == PAUSED_STATE:
            if not item.force and state != PAUSED_STATE:
                self._expect(dom, "stopped")
                with contextlib.suppress(HypervisorError):
                    await self.hv.shutdown(dom)
                for tick in range(item.grace_period_seconds * 10):  # ACPI first, like KubeVirt
                    if await self.hv.state(dom) not in RUNNING_STATES:
                        break
                    # A `stop --force` queued behind this graceful stop cuts the grace short.
                    if (
                        tick % 10 == 9
                        and (await VMRepository(self.store).get(item.ref))[0].stop_force
                    ):
                        break
                    await asyncio.sleep(0.1)
            if await self.hv.state(dom) in (*RUNNING_STATES, PAUSED_STATE):
                # The ACPI stop we expected never came: one expectation for the one event, or the
                # leftover would swallow the next instance's crash.
                pending = self._expected.get(dom, [])
                self._expected[dom] = [(k, t) for k, t in pending if k != "stopped"]
                self._expect(dom, "stopped")
                await self.hv.destroy(dom)
                reason = "destroyed"
        pod = self._pods.get(dom, pod_name(item.name, item.vmi_uid))
        await self._remove(dom, running=False)
        await asyncio.to_thread(
            shutil.rmtree, self.volumes.instance_dir(item.namespace, item.name), True
        )
        events: list[m.Event] = [m.LauncherDeleted(node=self.node, pod=pod)]
        if active:
            events.insert(0, m.DomainStopped(node=self.node, reason=reason))
        await self.observe(item.ref, events)

    async def _attach(self, item: w.AttachVolume, s: VMState) -> None:
        ref, dom, vol = item.ref, domain_name(item.ref), item.volume_name
        if s.phase != RUNNING or s.volumes.get(vol) != "Pending":
            return  # attached, failed or unplugged meanwhile; or the instance is ending
        try:
            resolved = await self.volumes.resolve_volume(
                item.volume, namespace=ref.namespace, name=ref.name, uid=item.vmi_uid
            )
            current = await self.hv.xml(dom)
            if disk_xml_of(current, resolved.path) is None:  # else attached before a crash of ours
                await self.hv.attach_device(dom, hotplug_disk(item.disk, resolved,
                                                              domain_xml=current))  # fmt: skip
        except (VolumeUnavailable, ValidationError, HypervisorError) as err:
            failed = m.VolumeAttachFailed(volume=vol, reason=err.message, node=self.node)
            await self.observe(ref, [failed])
            return
        await self.observe(ref, [m.VolumeAttached(volume=vol, node=self.node)])

    async def _detach(self, item: w.DetachVolume, s: VMState) -> None:
        ref, dom, vol = item.ref, domain_name(item.ref), item.volume_name
        if s.volumes.get(vol) != "Detaching":
            return
        try:
            resolved = await self.volumes.resolve_volume(
                item.volume, namespace=ref.namespace, name=ref.name, uid=item.vmi_uid
            )
        except (VolumeUnavailable, ValidationError) as err:
            # Without its file the disk cannot be found; it stays until the instance ends.
            log.warning("cannot detach %s from %s: %s", vol, dom, err)
            return
        current = await self.hv.xml(dom)
        if (disk := disk_xml_of(current, resolved.path)) is not None:  # else: never attached
            await self.hv.detach_device(dom, disk)
        await self.observe(ref, [m.VolumeDetached(volume=vol, node=self.node)])

    # --- what libvirt and the launchers tell us --------------------------------------------------

    def _expect(self, dom: str, kind: str) -> None:
        self._expected.setdefault(dom, []).append((kind, time.monotonic() + EXPECT_S))

    def _was_expected(self, ev: DomainEvent) -> bool:
        now = time.monotonic()
        pending = [(k, t) for k, t in self._expected.get(ev.domain, []) if t > now]
        for i, (kind, _) in enumerate(pending):
            if kind == ev.kind:
                del pending[i]
                self._expected[ev.domain] = pending
                return True
        self._expected[ev.domain] = pending
        return False

    async def _domain_events(self) -> None:
        while True:
            ev = await self.hv.events.get()
            try:
                await self._on_domain_event(ev)
            except VirtbusError as err:
                log.warning("reporting %s of %s failed: %s", ev.kind, ev.domain, err)

    async def _on_domain_event(self, ev: DomainEvent) -> None:
        metrics.LIBVIRT_EVENTS.labels(self.node, ev.kind, ev.reason).inc()
        if ev.kind not in ("stopped", "suspended", "resumed") or self._was_expected(ev):
            return
        ref = ref_of_domain(ev.domain)
        if ref is None or ev.reason in ("migrated", "postcopy"):  # a migration's own steps
            return
        if ev.kind == "stopped":
            await self._remove(ev.domain, running=False)
            await self.observe(ref, [m.DomainStopped(node=self.node, reason=ev.reason)])
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

    async def _launcher_exited(self, pod: str, code: int) -> None:
        dom = next((d for d, p in self._pods.items() if p == pod), None)
        if dom is None:
            return
        ref = ref_of_domain(dom)
        state = await self.hv.state(dom)
        await self._remove(dom, running=state in RUNNING_STATES or state == PAUSED_STATE)
        if ref is not None:
            failed = m.LauncherFailed(
                node=self.node, pod=pod, reason=f"launcher exited with code {code}", exit_code=code
            )
            await self.observe(ref, [failed])


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
