"""The node's part of a VM's lifecycle: start, stop, pause, unpause, soft reboot, reset, hotplug
and unplug, each carried out on libvirt and reported as the events it observed.

Every operation is idempotent: a redelivered item finds the domain already as wanted and only
reports what the log lacks. A stale item (its instance gone or elsewhere) is the caller's to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from events import model as m
from events import work as w
from events.errors import HypervisorError, ValidationError
from events.names import Ref
from events.state import RUNNING, SCHEDULED, SCHEDULING, STOPPING, TERMINATING, VMState
from workers.domain import disk_xml_of, hotplug_disk
from workers.hotplugxml import resized_memory_device
from workers.hypervisor import PAUSED_STATE, RUNNING_STATES, domain_name
from workers.node_context import Domains, Launchers, NodeContext
from workers.pods import pod_name
from workers.vmnet import NetworkError, bridged
from workers.volumes import VolumeUnavailable
from workers.volumestore import VolumeStore

log = logging.getLogger("virtbus.worker")
ForcedCheck = Callable[[Ref], Awaitable[bool]]


class ForcedStops:
    """A `stop --force` cuts short the grace of a graceful stop of the same instance. Its work
    item queues behind that stop (one VM's work runs in order), so it is noticed as it arrives:
    `arrived` asks `forced` (does the log say the stop is forced?) once, and sets the flag the
    graceful stop waits on. A delete's stop is forced too, but does not cut a grace short."""

    def __init__(self, forced: ForcedCheck, *, node: str) -> None:
        self.forced = forced
        self.node = node
        self.tasks: set[asyncio.Task[None]] = set()
        self._flags: dict[tuple[Ref, str], asyncio.Event] = {}

    def flag(self, item: w.Work) -> asyncio.Event:
        return self._flags.setdefault((item.ref, item.vmi_uid), asyncio.Event())

    def arrived(self, item: w.Work) -> None:
        if not (isinstance(item, w.Stop) and item.force):
            return
        flag = self.flag(item)
        task = asyncio.create_task(self._check(item.ref, flag), name=f"worker-{self.node}-force")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _check(self, ref: Ref, flag: asyncio.Event) -> None:
        if await self.forced(ref):
            flag.set()

    def done(self, item: w.Work) -> None:
        """A stop of the instance has been handled: its grace, if any, is over."""
        if isinstance(item, w.Stop):
            self._flags.pop((item.ref, item.vmi_uid), None)


class Lifecycle:
    def __init__(
        self, ctx: NodeContext, *, launchers: Launchers, domains: Domains, forced: ForcedStops
    ) -> None:
        self.ctx = ctx
        self.launchers = launchers
        self.domains = domains
        self.forced = forced

    async def do(self, item: w.Work, s: VMState) -> None:
        hv, node, dom = self.ctx.hv, self.ctx.node, domain_name(item.ref)
        match item:
            case w.Start():
                await self._start(item, s)
            case w.Stop():
                await self._stop(item, s)
            case w.Pause():
                if s.phase == RUNNING and not s.paused:
                    self.ctx.expectations.expect(dom, "suspended")
                    await hv.suspend(dom)
                    await self.ctx.observe(item.ref, [m.DomainPaused(node=node)])
            case w.Unpause():
                if s.paused:
                    self.ctx.expectations.expect(dom, "resumed")
                    await hv.resume(dom)
                    await self.ctx.observe(item.ref, [m.DomainResumed(node=node)])
            case w.SoftReboot():
                if s.phase == RUNNING and s.soft_reboot == item.vmi_uid:  # not asked yet
                    method = "agent" if s.agent_connected else "acpi"
                    error = ""
                    try:
                        await hv.reboot_guest(dom, agent=s.agent_connected)
                    except HypervisorError as err:
                        error = err.message
                    sent = m.SoftRebootSent(node=node, method=method, error=error)
                    await self.ctx.observe(item.ref, [sent])
            case w.Reset():
                if s.phase == RUNNING and s.reset_done < item.version:
                    self.ctx.expectations.expect(dom, "rebooted")  # the reset's own REBOOT event
                    await hv.reset(dom)
                    await self.ctx.observe(
                        item.ref, [m.DomainRebooted(node=node, reset=item.version)]
                    )
            case w.AttachVolume():
                await self._attach(item, s)
            case w.DetachVolume():
                await self._detach(item, s)
            case w.Resize():
                await self._resize(item, s)

    async def _start(self, item: w.Start, s: VMState) -> None:
        ref, dom, node, hv = item.ref, domain_name(item.ref), self.ctx.node, self.ctx.hv
        if s.status in (STOPPING, TERMINATING) or s.phase not in (SCHEDULING, SCHEDULED):
            return
        state = await hv.state(dom)
        if state in RUNNING_STATES or state == PAUSED_STATE:  # started before a crash of ours
            await self.ctx.observe(ref, [m.DomainStarted(node=node)])
            return

        async def pulled(event: m.ImagePulling | m.ImagePulled) -> None:
            await self.ctx.observe(ref, [event])

        network = self.ctx.network if item.ip else None
        tap = network.names(dom)[2] if network is not None else ""
        try:
            xml = await self.domains.xml(item.spec, ref=ref, uid=item.vmi_uid, on_pull=pulled,
                                         tap=tap, mac=item.mac)  # fmt: skip
            if network is not None:
                bridge = item.cidr if bridged(item.spec) else ""
                await network.prepare(dom, ip=item.ip, bridge=bridge)
        except VolumeUnavailable as err:
            fail = m.VMStartFailed(reason=err.message, status=err.status, node=node)
            await self.ctx.observe(ref, [fail])
            return
        except (ValidationError, NetworkError) as err:
            if network is not None:
                await network.remove(dom)
            await self.ctx.observe(ref, [m.VMStartFailed(reason=err.message, node=node)])
            return
        pod = await self.launchers.start(
            dom, pod_name(ref.name, item.vmi_uid), namespace=ref.namespace
        )
        events: list[m.Event] = [m.LauncherCreated(node=node, pod=pod)]
        started = False
        try:
            uuid = await hv.define(xml)
            events.append(m.DomainDefined(node=node, domain_uuid=uuid))
            self.ctx.expectations.expect(dom, "started")
            await hv.start(dom)
            started = True
            if network is not None:
                await network.attach(dom)  # QEMU holds the tap now
        except (HypervisorError, NetworkError) as err:
            await self.launchers.remove(dom, running=started)
            events.append(m.VMStartFailed(reason=err.message, status="Stopped", node=node))
            await self.ctx.observe(ref, events)
            return
        events.append(m.DomainStarted(node=node))
        await self.ctx.observe(ref, events)

    async def _stop(self, item: w.Stop, s: VMState) -> None:
        dom, hv, expectations = domain_name(item.ref), self.ctx.hv, self.ctx.expectations
        state = await hv.state(dom)
        active = s.phase in (SCHEDULING, SCHEDULED, RUNNING)
        if state is None and self.launchers.pod_of(dom) is None and not active:
            return  # done already (a second stop queued behind the first): nothing to report
        reason = "shutdown"
        if state in RUNNING_STATES or state == PAUSED_STATE:
            if not item.force and state != PAUSED_STATE:
                expectations.expect(dom, "stopped")
                with contextlib.suppress(HypervisorError):
                    await hv.shutdown(dom)
                forced = self.forced.flag(item)
                for _ in range(item.grace_period_seconds * 10):  # ACPI first, like KubeVirt
                    if forced.is_set() or await hv.state(dom) not in RUNNING_STATES:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(forced.wait(), 0.1)
            if await hv.state(dom) in (*RUNNING_STATES, PAUSED_STATE):
                # The ACPI stop we expected never came: one expectation for the one event, or the
                # leftover would swallow the next instance's crash.
                expectations.forget(dom, "stopped")
                expectations.expect(dom, "stopped")
                await hv.destroy(dom)
                reason = "destroyed"
        pod = self.launchers.pod_of(dom) or pod_name(item.name, item.vmi_uid)
        await self.launchers.remove(dom, running=False)
        await self.domains.volumes.remove_instance(item.ref)
        events: list[m.Event] = [m.LauncherDeleted(node=self.ctx.node, pod=pod)]
        if active:
            events.insert(0, m.DomainStopped(node=self.ctx.node, reason=reason))
        # Together: the controller's decision on the stop (a deletion) comes after both.
        await self.ctx.observe(item.ref, events, together=True)

    async def _attach(self, item: w.AttachVolume, s: VMState) -> None:
        ref, dom, vol, hv = item.ref, domain_name(item.ref), item.volume_name, self.ctx.hv
        if s.phase != RUNNING or s.volumes.get(vol) != "Pending":
            return  # attached, failed or unplugged meanwhile; or the instance is ending
        try:
            resolved = await self.domains.volumes.resolve_volume(
                item.volume, namespace=ref.namespace, name=ref.name, uid=item.vmi_uid
            )
            current = await hv.xml(dom)
            if disk_xml_of(current, resolved.path) is None:  # else attached before a crash of ours
                await hv.attach_device(dom, hotplug_disk(item.disk, resolved, domain_xml=current))
        except (VolumeUnavailable, ValidationError, HypervisorError) as err:
            why = await self._elsewhere(item, ref.namespace) or err.message
            failed = m.VolumeAttachFailed(volume=vol, reason=why, node=self.ctx.node)
            await self.ctx.observe(ref, [failed])
            return
        await self.ctx.observe(ref, [m.VolumeAttached(volume=vol, node=self.ctx.node)])

    async def _elsewhere(self, item: w.AttachVolume, namespace: str) -> str:
        """Why a claim cannot be plugged here when it is another node's disk ("" if it is not):
        said so, rather than "not found" of a claim that exists."""
        claim = (item.volume.get("persistentVolumeClaim") or {}).get("claimName")
        if not isinstance(claim, str) or not claim:
            return ""
        v = await VolumeStore.state_of(self.ctx.store, namespace, claim)
        if not v.exists or not v.node or v.node == self.ctx.node:
            return ""
        return (f'volume: persistentvolumeclaim "{claim}" is on node {v.node}, not on node '
                f"{self.ctx.node} where the VMI runs (a claim is one node's disk): move it with "
                f"`virtbus volume move {claim} --to {self.ctx.node}` while no running VM uses "
                "it, then add it again")  # fmt: skip

    async def _detach(self, item: w.DetachVolume, s: VMState) -> None:
        ref, dom, vol, hv = item.ref, domain_name(item.ref), item.volume_name, self.ctx.hv
        if s.volumes.get(vol) != "Detaching":
            return
        try:
            resolved = await self.domains.volumes.resolve_volume(
                item.volume, namespace=ref.namespace, name=ref.name, uid=item.vmi_uid
            )
        except (VolumeUnavailable, ValidationError) as err:
            # Without its file the disk cannot be found; it stays until the instance ends.
            log.warning("cannot detach %s from %s: %s", vol, dom, err)
            return
        current = await hv.xml(dom)
        if (disk := disk_xml_of(current, resolved.path)) is not None:  # else: never attached
            await hv.detach_device(dom, disk)
        await self.ctx.observe(ref, [m.VolumeDetached(volume=vol, node=self.ctx.node)])

    async def _resize(self, item: w.Resize, s: VMState) -> None:
        """CPU sockets by libvirt's setVcpus, memory by the virtio-mem device's requested size
        (virt-launcher's UpdateVCPUs and UpdateGuestMemory); each outcome is observed."""
        ref, dom, hv, node, size = (
            item.ref,
            domain_name(item.ref),
            self.ctx.hv,
            self.ctx.node,
            item.size,
        )
        if s.phase != RUNNING:
            return
        if item.sockets and s.hot_sockets == item.sockets:
            try:
                await hv.set_vcpus(dom, item.sockets * size.cores * size.threads)
                done: m.Event = m.HotVCPUChanged(sockets=item.sockets, node=node)
            except HypervisorError as err:
                done = m.HotChangeFailed(resource="cpu", reason=err.message, node=node)
            await self.ctx.observe(ref, [done])
        if item.guest and s.hot_guest == item.guest:
            try:
                xml = resized_memory_device(await hv.xml(dom), requested=item.guest - size.guest)
                if xml is None:
                    raise HypervisorError("the domain has no virtio-mem device to resize")
                await hv.update_device(dom, xml)
                done = m.HotMemoryChanged(guest=item.guest, node=node)
            except HypervisorError as err:
                done = m.HotChangeFailed(resource="memory", reason=err.message, node=node)
            await self.ctx.observe(ref, [done])
