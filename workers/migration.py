"""A node's part in a migration: prepare the target, migrate from the source, abort, clean up.

Live (two QEMU nodes): the target starts the launcher and says it is ready; the source's libvirtd
migrates the domain peer to peer (`migrateToURI3`, LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE,
data over loopback), reporting `MigrationProgress` from libvirt's job stats twice a second, then
`MigrationSucceeded` with libvirt's downtime or `MigrationFailed` with libvirt's reason (the guest
still runs on the source). Cold (libvirt's test driver cannot migrate): the target defines and
starts the domain, the source destroys its copy; the events say `mode="cold"`.

What ran where is always settled from libvirt itself: a source worker restarted mid-migration
waits for the job to end, then asks both nodes where the domain runs, and records that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import libvirt
from msgspec.structs import replace
from nats.aio.msg import Msg

from bus.vms import VMRepository
from events import model as m
from events import work as w
from events.errors import HypervisorError, ValidationError
from events.names import Ref
from events.nodes import NodeState, apply_node
from events.state import (
    PREPARING_TARGET,
    RUNNING,
    SCHEDULED,
    SCHEDULING,
    TARGET_READY,
    VMState,
    migration_active,
)
from workers.domain import guest_memory_bytes
from workers.hypervisor import PAUSED_STATE, RUNNING_STATES, domain_name, remote_domain
from workers.node_context import Domains, Launchers, MigrationSettings, NodeContext
from workers.vmnet import NetworkError, bridged, names
from workers.volumes import VolumeUnavailable

log = logging.getLogger("virtbus.migration")
PROGRESS_S = 0.5  # under the promised once a second
_BEFORE_READY = (SCHEDULING, SCHEDULED, PREPARING_TARGET)
LIVE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)  # fmt: skip


def target_pod_name(name: str, migration: str) -> str:
    """The target launcher's name: unlike the source's, from the migration (KubeVirt's too)."""
    return f"virt-launcher-{name}-{hashlib.sha1(migration.encode()).hexdigest()[:5]}"


def outgoing(s: VMState) -> bool:
    """A migration from the VM's node whose job was started (the sync loop settles it)."""
    return s.migration is not None and s.migration.phase == RUNNING and s.migration.source == s.node


def incoming(s: VMState, node: str) -> bool:
    """A migration to `node` under way (the sync loop leaves its domain alone)."""
    mig = s.migration
    return migration_active(mig) and mig is not None and mig.target == node and s.node != node


def _mine(s: VMState, item: w.MigrationWork) -> bool:
    return (
        s.migration is not None and s.migration.id == item.migration and s.vmi_uid == (item.vmi_uid)
    )


def _since(t: datetime | None) -> float:
    return (datetime.now(UTC) - t).total_seconds() * 1000 if t else 0.0


def migrate_params(settings: MigrationSettings, policy: w.MigrationPolicy) -> dict[str, Any]:
    """migrateToURI3's parameters: the node's migration address, the policy's bandwidth."""
    params: dict[str, Any] = {}
    if settings.address:  # else libvirt's choice: the target's host name, listening on 0.0.0.0
        params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{settings.address}"
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = settings.address
    if policy.bandwidth_bytes:  # KubeVirt's 0: no limit
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = max(1, policy.bandwidth_bytes >> 20)  # MiB/s
    return params


def migrate_flags(settings: MigrationSettings, policy: w.MigrationPolicy) -> int:
    """migrateToURI3's flags: live, peer to peer, and what the node and the policy allow."""
    flags: int = LIVE_FLAGS
    if settings.shared_storage:  # the disks are there already; libvirt cannot always tell
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if policy.allow_auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.allow_post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


def _progress(migration: str, stats: dict[str, Any]) -> m.MigrationProgress | None:
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None  # no job (yet, or any more)
    total = int(stats.get("data_total", 0))  # 0 while the target QEMU is still starting
    remaining = int(stats.get("data_remaining", 0))
    percent = round(100.0 * (total - remaining) / total, 1) if total else 0.0
    return m.MigrationProgress(
        migration=migration, percent=percent,
        data_processed=int(stats.get("data_processed", 0)), data_remaining=remaining,
        data_total=total, rate_bps=float(stats.get("memory_bps", 0)),
    )  # fmt: skip


class Migrations:
    def __init__(self, ctx: NodeContext, *, launchers: Launchers, domains: Domains) -> None:
        self.ctx = ctx
        self.launchers = launchers
        self.domains = domains
        self.tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}  # migration -> its migrate call
        self._settling: dict[str, asyncio.Task[None]] = {}  # domain -> outcome being settled
        self._abort: dict[str, str] = {}  # migration -> why it is being aborted

    # --- dispatch --------------------------------------------------------------------------------

    async def do(self, item: w.MigrationWork, s: VMState) -> None:
        if not _mine(s, item):
            return  # stale: another migration, or another instance
        match item:
            case w.PrepareTarget():
                await self._prepare(item, s)
            case w.MigrateSource():
                await self._migrate(item, s)
            case w.CleanupTarget():
                await self._cleanup(item, s)
            case w.AbortMigration():
                await self._abort_now(item)

    def urgent(self, item: w.Work, msg: Msg) -> bool:
        """An abort must not queue behind the migration it aborts: take it at once."""
        if not isinstance(item, w.AbortMigration):
            return False
        self._spawn(self._abort_msg(item, msg), f"abort-{item.migration}")
        return True

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"worker-{self.ctx.node}-{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _abort_msg(self, item: w.AbortMigration, msg: Msg) -> None:
        s, _ = await VMRepository(self.ctx.store).get(item.ref)
        if _mine(s, item):
            await self._abort_now(item)
        await msg.ack()

    async def _abort_now(self, item: w.MigrationWork) -> None:
        why = item.reason if isinstance(item, w.AbortMigration) else ""
        self._abort.setdefault(item.migration, why or "canceled by the user (migrate-cancel)")
        if item.migration in self._running:
            # Not started yet, or just ended: the watch loop tries again while the call runs.
            with contextlib.suppress(HypervisorError):
                await self.ctx.hv.abort_job(domain_name(item.ref))

    # --- the target ------------------------------------------------------------------------------

    async def _prepare(self, item: w.PrepareTarget, s: VMState) -> None:
        mig = s.migration
        if mig is None or mig.phase not in _BEFORE_READY or item.target != self.ctx.node:
            return
        ref, dom = item.ref, domain_name(item.ref)
        pod = await self.launchers.start(
            dom, target_pod_name(ref.name, mig.id), namespace=ref.namespace
        )
        events: list[m.Event] = [] if mig.target_pod == pod else [m.LauncherCreated(
            node=self.ctx.node, pod=pod)]  # fmt: skip
        if mig.phase != PREPARING_TARGET:
            events.append(m.MigrationTargetPreparing(migration=mig.id, target=self.ctx.node))
        network = self.ctx.network if s.ip and item.live else None
        if not item.live or network is not None:
            try:
                if network is not None:  # the VM's namespace here; the route moves on arrival
                    bridge = s.cidr if bridged(s.spec) else ""
                    await network.prepare(dom, ip=s.ip, route=False, bridge=bridge)
                else:
                    events += await self._cold_start(item, paused=s.paused)
            except (VolumeUnavailable, ValidationError, HypervisorError, NetworkError) as err:
                await self.ctx.observe(ref, events)
                why = f"target {self.ctx.node}: {err.message}"
                await self.ctx.observe(ref, [m.MigrationFailed(migration=mig.id, reason=why)])
                return
        events.append(m.MigrationTargetReady(migration=mig.id, target=self.ctx.node))
        await self.ctx.observe(ref, events)

    async def _cold_start(self, item: w.PrepareTarget, *, paused: bool) -> list[m.Event]:
        """A cold move's target: the domain defined and booted here from the spec, and paused
        again when the VM was (the log goes on saying Paused, so libvirt must too)."""
        ref, dom = item.ref, domain_name(item.ref)
        if await self.ctx.hv.state(dom) in (*RUNNING_STATES, PAUSED_STATE):
            return []  # started before a crash of ours
        pulls: list[m.Event] = []  # a container disk this node lacked: reported with the rest

        async def pulled(event: m.ImagePulling | m.ImagePulled) -> None:
            pulls.append(event)

        xml = await self.domains.xml(item.spec, ref=ref, uid=item.vmi_uid, on_pull=pulled)
        uuid = await self.ctx.hv.define(xml)
        await self.ctx.hv.start(dom)
        if paused:
            self.ctx.expectations.expect(dom, "suspended")
            await self.ctx.hv.suspend(dom)
        return [*pulls, m.DomainDefined(node=self.ctx.node, domain_uuid=uuid),
                m.DomainStarted(node=self.ctx.node, reason="cold-migrated")]  # fmt: skip

    async def _cleanup(self, item: w.CleanupTarget, s: VMState) -> None:
        mig = s.migration
        if mig is None or item.target != self.ctx.node or s.node == self.ctx.node:
            return  # the VM runs here after all: nothing of it is a leftover
        dom = domain_name(item.ref)
        if (state := await self.ctx.hv.state(dom)) is not None:
            await self.launchers.remove(dom, running=state in (*RUNNING_STATES, PAUSED_STATE))
        else:
            await self.launchers.delete(dom)
            if self.ctx.network is not None:  # made for a guest that never came
                await self.ctx.network.remove(dom)
        await self.ctx.observe(
            item.ref, [m.LauncherDeleted(node=self.ctx.node, pod=mig.target_pod)]
        )

    # --- the source ------------------------------------------------------------------------------

    async def _migrate(self, item: w.MigrateSource, s: VMState) -> None:
        mig = s.migration
        if mig is None or item.source != self.ctx.node or s.node != self.ctx.node:
            return
        dom = domain_name(item.ref)
        if mig.phase == RUNNING:  # started before a crash of ours: settle what became of it
            await self.settle(item.ref, s)
            return
        if mig.phase != TARGET_READY:
            return
        await self.ctx.observe(item.ref, [m.MigrationStarted(migration=mig.id)])
        if not item.live:
            await self._cold_source(item, s)
            return
        with contextlib.suppress(HypervisorError):  # older QEMU: only during the job
            await self.ctx.hv.set_max_downtime(dom, item.policy.max_downtime_ms)
        node, params = self.ctx.migration, migrate_params(self.ctx.migration, item.policy)
        if self.ctx.network is not None and s.ip:  # the target opens its own tap, not ours
            ours, theirs = self.ctx.network.names(dom)[2], names(dom, node=mig.target)[2]
            xml = await self.ctx.hv.xml(dom, migratable=True)
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = xml.replace(f"'{ours}'", f"'{theirs}'")
        call = self.ctx.hv.migrate(dom, item.target_uri, params=params,
                                   flags=migrate_flags(node, item.policy))  # fmt: skip
        task = self._running[mig.id] = self._spawn(call, f"migrate-{mig.id}")
        try:
            await self._watch(item, s, task)
            await task
        except HypervisorError as err:
            why = self._abort.get(mig.id)
            reason, aborted = (f"{why}: {err.message}", True) if why else (err.message, False)
            await self.ctx.observe(item.ref, [m.MigrationFailed(migration=mig.id, reason=reason,
                                                              aborted=aborted)])  # fmt: skip
            return
        finally:
            self._running.pop(mig.id, None)
            self._abort.pop(mig.id, None)
        _, stats = await remote_domain(item.target_uri, dom)
        await self._succeeded(item.ref, s, stats=stats)

    async def _watch(self, item: w.MigrateSource, s: VMState, task: asyncio.Task[None]) -> None:
        """Progress events while the job runs; abort it past KubeVirt's completion timeout."""
        dom, mig_id = domain_name(item.ref), item.migration
        memory_gib = max(1.0, _memory_bytes(s) / (1 << 30))
        deadline = time.monotonic() + item.policy.completion_timeout_per_gib * memory_gib
        post_copy = False
        last = m.MigrationProgress(migration=mig_id, percent=0.0)
        while not task.done():
            if mig_id in self._abort:
                await self._abort_now(item)
            await asyncio.wait({task}, timeout=PROGRESS_S)
            if task.done():
                return
            with contextlib.suppress(HypervisorError):
                if (progress := _progress(mig_id, await self.ctx.hv.job_stats(dom))) is not None:
                    last = progress
                    await self.ctx.observe(item.ref, [replace(progress, post_copy=post_copy)])
            if time.monotonic() > deadline and mig_id not in self._abort:
                if item.policy.allow_post_copy and not post_copy:
                    # KubeVirt's way: past the timeout, the guest runs on the target and pulls
                    # the pages it still lacks, so the migration completes.
                    post_copy = True
                    with contextlib.suppress(HypervisorError):  # the job may end meanwhile
                        await self.ctx.hv.start_post_copy(dom)
                        # Said at once, even when the job ends as it switches (no stats then):
                        # the log must know the guest ran on the target before the last pages.
                        try:
                            stats = await self.ctx.hv.job_stats(dom)
                        except HypervisorError:
                            stats = {}
                        switched = _progress(mig_id, stats) or last
                        await self.ctx.observe(item.ref, [replace(switched, post_copy=True)])
                    continue
                limit = int(item.policy.completion_timeout_per_gib * memory_gib)
                self._abort[mig_id] = (f"Live migration is not completed after {limit} sec and has "
                                    "been aborted")  # fmt: skip

    async def _succeeded(
        self, ref: Ref, s: VMState, *, stats: dict[str, Any], mode: str = "live"
    ) -> None:
        """Record the move; `stats` are libvirt's of the completed job (the last progress)."""
        mig = s.migration
        assert mig is not None
        done = m.MigrationSucceeded(migration=mig.id, source=mig.source, target=mig.target,
                                    duration_ms=round(_since(mig.scheduled), 1),
                                    downtime_ms=float(stats.get("downtime", 0)),
                                    mode=mode)  # fmt: skip
        events: list[m.Event] = [done]
        if stats and (last := _progress(mig.id, stats)) is not None:  # the completed job's figures
            events.insert(0, replace(last, percent=100.0, data_remaining=0))
        if pod := await self.launchers.delete(domain_name(ref)):  # it has nothing to run
            events.append(m.LauncherDeleted(node=self.ctx.node, pod=pod))
        if self.ctx.network is not None:  # the VM's namespace here: the target has its own
            await self.ctx.network.remove(domain_name(ref))
        await self.ctx.observe(ref, events)

    async def _cold_source(self, item: w.MigrateSource, s: VMState) -> None:
        """A cold move's source: the copy here goes; the target booted its own already."""
        ref, dom = item.ref, domain_name(item.ref)
        state = await self.ctx.hv.state(dom)
        if state in (*RUNNING_STATES, PAUSED_STATE):
            self.ctx.expectations.expect(dom, "stopped")
            await self.ctx.hv.destroy(dom)
        with contextlib.suppress(HypervisorError):
            await self.ctx.hv.undefine(dom)
        await self.domains.volumes.remove_instance(ref)
        await self.ctx.observe(ref, [m.DomainStopped(node=self.ctx.node, reason="migrated")])
        await self._succeeded(ref, s, stats={}, mode="cold")

    # --- after a restart -------------------------------------------------------------------------

    def resume(self, ref: Ref, s: VMState) -> None:
        """The sync loop found a migration from here under way: settle it in the background."""
        self._spawn(self.settle(ref, s), f"settle-{ref.name}")

    async def settle(self, ref: Ref, s: VMState) -> None:
        dom = domain_name(ref)
        if (busy := self._settling.get(dom)) is not None:
            await asyncio.shield(busy)
            return
        task = self._settling[dom] = asyncio.current_task()  # type: ignore[assignment]
        try:
            await self._settle(ref, s)
        finally:
            if self._settling.get(dom) is task:
                del self._settling[dom]

    async def _settle(self, ref: Ref, s: VMState) -> None:
        mig = s.migration
        if mig is None or not migration_active(mig):
            return
        dom, uri = domain_name(ref), await self._uri_of(mig.target)
        alive, finishing = (*RUNNING_STATES, PAUSED_STATE), 20  # x PROGRESS_S: a switchover
        while (state := await self.ctx.hv.state(dom)) in alive:
            with contextlib.suppress(HypervisorError):
                stats = await self.ctx.hv.job_stats(dom)
                if (progress := _progress(mig.id, stats)) is not None:
                    await self.ctx.observe(ref, [progress])
                elif finishing and uri and (await remote_domain(uri, dom))[0] in RUNNING_STATES:
                    finishing -= 1  # the target runs it already; the source is going away
                else:
                    break  # no job, and the target does not run it: it stayed here
            await asyncio.sleep(PROGRESS_S)
        if state in alive:
            reason = "the migration job ended without completing while the source worker was down"
            await self.ctx.observe(ref, [m.MigrationFailed(migration=mig.id, reason=reason)])
            return
        there, stats = await remote_domain(uri, dom) if uri else (None, {})
        if there in (*RUNNING_STATES, PAUSED_STATE):
            await self._succeeded(ref, s, stats=stats)
            return
        await self.ctx.observe(ref, [
            m.MigrationFailed(migration=mig.id, reason="the domain is on neither node"),
            m.DomainStopped(node=self.ctx.node, reason="lost"),
        ])  # fmt: skip

    async def _uri_of(self, node: str) -> str:
        n = NodeState()
        for rec in await self.ctx.store.read(Ref.node(node)):
            n = apply_node(n, rec.envelope)
        return n.migration_uri


def _memory_bytes(s: VMState) -> int:
    try:
        return guest_memory_bytes(s.spec)
    except ValidationError:
        return 0
