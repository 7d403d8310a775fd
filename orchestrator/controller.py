"""virt-controller: follows the whole log, keeps every VM and node folded in memory, and reacts.

One task applies events in log order and runs the pure `reconcile` on what changed; decisions are
appended with the VM's version as the expected one, so two controllers never both decide (the
loser's append conflicts and is dropped: the winner's event arrives and is reconciled anew). Node
liveness comes from the heartbeat bucket; a node silent for longer than the grace is `NodeLost`.
What it knows (the folded state the intake also judges against) is `folded.Folded`; placement's
bookkeeping is `capacity.Capacity`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client

from bus.crashpoints import crash_at
from bus.store import EventStore
from bus.tail import Follows
from bus.telemetry import traced
from events import model as m
from events import work as w
from events.envelope import Recorded
from events.errors import ConcurrencyConflict, ValidationError, VirtbusError
from events.manifest import data_volume_commands
from events.names import HEARTBEAT_BUCKET, Ref, aggregate_key
from events.nodes import READY
from events.replicasets import owners
from events.state import (
    PENDING,
    UNSCHEDULABLE,
    VMState,
)
from events.volumes import VolumeState
from orchestrator import metrics
from orchestrator.folded import Folded
from orchestrator.instancetypes import captures, effective, expansion
from orchestrator.keyed import KeyedQueue
from orchestrator.lease import either
from orchestrator.migrations import Cluster
from orchestrator.nodeloss import Heartbeats, record_lost
from orchestrator.pool_state import Op, leftovers
from orchestrator.reconcile import Reaction, reconcile, reconcile_rs
from orchestrator.scheduler import place
from orchestrator.snapshots import removal_work
from orchestrator.volumes import (
    assume,
    bind_claims,
    claims_for,
    cluster_view,
    decide_volume,
    follow_cold_move,
    pin,
    volume_work,
    waiting_on,
)
from orchestrator.workout import WorkOut

log = logging.getLogger("virtbus.controller")
REACT_PARALLEL = 64  # VMs whose reactions wait on the bus at once
CATCH_UP_S = 5.0  # how long a judgement waits for the controller to fold the log's end
_FREES_CAPACITY = (m.VMStopped, m.VMFailed, m.VMDeleted, m.VMUnschedulable)
# Steps of a start that change no decision: the phase they belong to was reconciled already,
# and the step after them (DomainStarted, or a failure) is what the controller acts on.
_PROGRESS_ONLY = (m.LauncherCreated, m.DomainDefined)
_ENDS_MIGRATION = (m.MigrationSucceeded, m.MigrationFailed, m.VMStopped, m.VMFailed, m.VMDeleted)


class Controller(Folded):
    def __init__(
        self, nc: Client, store: EventStore, *, node_grace_s: float = 10.0,
        migration_policy: w.MigrationPolicy | None = None, vmi_cidr: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(nc, stream=store.stream, migration_policy=migration_policy,
                         vmi_cidr=vmi_cidr)  # fmt: skip
        self.store = store
        self._work = WorkOut(nc, store)
        self.follows: Follows = store  # the live log: its own follow, or a Tail shared with others
        self.node_grace_s = node_grace_s
        self._wakes: dict[str, datetime] = {}
        self._volume_wakes: dict[str, datetime] = {}
        self._started = time.time()
        self._reactions: KeyedQueue[Recorded] = KeyedQueue(
            self.react, parallel=REACT_PARALLEL, name="controller-react"
        )
        metrics.watch(self)

    # --- reacting --------------------------------------------------------------------------------

    async def react(self, key: str, cause: Recorded | None = None) -> Reaction | None:
        # What a reaction appends and enqueues continues the trace of the event that caused it.
        with traced(cause.envelope.traceparent if cause else None):
            return await self._decide_and_act(key, cause)

    async def _decide_and_act(self, key: str, cause: Recorded | None) -> Reaction | None:
        s = self.vms.get(key)
        if s is None:
            return None
        lost = {n for n, st in self.nodes.items() if st.status != READY}
        config = self.settings.config
        policy, policy_name = self.migration_settings(s, config.migrations)
        cluster = Cluster(
            nodes=self.nodes, views=self.node_views, slot_free=self.capacity.slot_free,
            policy=policy, policy_name=policy_name, eviction_strategy=config.eviction_strategy,
        )  # fmt: skip
        # KubeVirt's ControllerRevisions: captured from the same objects `effective` reads now.
        captured = expansion(s, known=self.instancetypes, vms=self.vms,
                             policy=config.reference_policy) or captures(
            s, known=self.instancetypes, vms=self.vms)  # fmt: skip
        s, refused = effective(
            s, known=self.instancetypes, vms=self.vms
        )  # sized by its instance type
        reaction = reconcile(
            s, lost_nodes=lost, cluster=cluster,
            place=lambda req: refused() or place(
                pin(req, s.spec, self.volumes, namespace=s.namespace, assumed=self.assumed),
                self.node_views()),
            now=datetime.now(UTC), new_uid=lambda: uuid.uuid4().hex,
            addresses=self.addresses.of(key), config=config,
        )  # fmt: skip
        if captured:
            reaction = Reaction([*captured, *reaction.events], reaction.work, reaction.wake_at)
        if reaction.wake_at:
            self._wakes[key] = reaction.wake_at
        if reaction.events:
            ref = Ref("vm", s.namespace, s.name)
            # Held before the append awaits: reactions run side by side, and another VM's
            # placement (or migration) must see this capacity (or slot) taken.
            held = self.capacity.hold(key, s, reaction.events)
            noted = [k for e in reaction.events if isinstance(e, m.VMScheduled)
                     for k in assume(s.spec, self.volumes, namespace=s.namespace, node=e.node,
                                     assumed=self.assumed)]  # fmt: skip
            try:
                # Step by step, not one atomic batch: a prefix is a valid state to reconcile.
                await self.store.append_steps(
                    ref, reaction.events, expected_version=s.version,
                    causationid=cause.envelope.id if cause else "",
                    correlationid=cause.envelope.correlationid if cause else "",
                )  # fmt: skip
            except ConcurrencyConflict:
                metrics.REACTION_CONFLICTS.inc()
                self.capacity.release(key, held)
                self.addresses.release(key)
                for k in noted:
                    self.assumed.pop(k, None)
                return None  # another controller decided first; its events will come here
            crash_at("decided", reaction.events)
        work = list(reaction.work)
        for item in [x for x in work if isinstance(x, w.Start | w.AttachVolume)]:
            if not await self._claims_ready(s, item, cause):
                work.remove(item)  # it starts (or plugs) once they are
        await self._work.send(work)
        return reaction

    async def _claims_ready(self, s: VMState, item: w.Work, cause: Recorded | None) -> bool:
        """WaitForFirstConsumer: bind the claims a start (or a hotplug) needs to its node;
        whether they are all there for it (a VolumeReady kicks the VM again)."""
        bind, ready = bind_claims(claims_for(s, item), self.volumes, namespace=s.namespace,
                                  node=item.node)  # fmt: skip
        # Versions as judged, before any await: a claim bound meanwhile must conflict.
        versions = [self.volumes[f"virt.volume.{r.namespace}.{r.name}"].version for r in bind]
        for ref, version in zip(bind, versions, strict=True):
            with contextlib.suppress(ConcurrencyConflict):  # bound meanwhile: that node holds
                await self.store.append(
                    ref, [m.VolumeNodeSelected(node=item.node, consumer=s.name)],
                    expected_version=version, causationid=cause.envelope.id if cause else "",
                    correlationid=cause.envelope.correlationid if cause else "",
                )  # fmt: skip
        return ready

    async def _move_volumes_with(self, s: VMState, target: str, *, cause: Recorded) -> None:
        if s.running:
            return  # a running VM's cold move boots on the target with the disks where they are
        for ref, event, version in follow_cold_move(s, target, self.volumes, self.vms):
            with contextlib.suppress(ConcurrencyConflict):  # a move decided meanwhile wins
                await self.store.append(ref, [event], expected_version=version,
                                        causationid=cause.envelope.id,
                                        correlationid=cause.envelope.correlationid)  # fmt: skip

    async def react_volume(self, key: str) -> None:
        v, now = self.volumes[key], datetime.now(UTC)
        if v.exists and v.retry_at is not None and now < v.retry_at:
            self._volume_wakes[key] = v.retry_at  # its failed fill goes again then
        await self._work.send(volume_work(v, now=now))

    async def react_rs(self, key: str, *, cause: Recorded | None = None) -> None:
        rs = self.replica_sets.get(key)
        if rs is None:
            return
        mine = {s.name: s for s in self.vms.values() if s.namespace == rs.namespace}
        await self._append_ops(reconcile_rs(rs, mine, self.volumes), cause=cause)

    async def _append_ops(self, ops: list[Op], *, cause: Recorded | None) -> None:
        """Each op on the version it was judged at (one decided elsewhere already conflicts
        and is dropped); an op on a pool notes what the op before it did: it goes, with the
        pool's other notes, after the rest, and only if that op went. A note is a fact (what
        was done is done): it lands on the pool's current version, whatever was written since."""
        notes: dict[str, tuple[Ref, list[m.Event], int]] = {}
        went = False
        for ref, events, version in ops:
            if ref.kind in ("vmpool", "rs"):
                if went:
                    notes.setdefault(ref.prefix, (ref, [], version))[1].extend(events)
                continue
            if events and isinstance(made := events[0], m.VMCreated | m.VMSpecChanged):
                await self._make_data_volumes(ref, made.spec, cause=cause)  # before the VM
            went = await self._append(ref, events, version, cause=cause)
        for ref, events, _ in notes.values():
            await self.store.append_fact(
                ref, events, causationid=cause.envelope.id if cause else "",
                correlationid=cause.envelope.correlationid if cause else "", together=True,
            )  # fmt: skip

    async def _append(
        self, ref: Ref, events: list[m.Event], version: int, *, cause: Recorded | None
    ) -> bool:
        if not events:
            return False
        try:
            await self.store.append(
                ref, events, expected_version=version,
                causationid=cause.envelope.id if cause else "",
                correlationid=cause.envelope.correlationid if cause else "",
            )  # fmt: skip
        except ConcurrencyConflict:
            return False
        return True

    async def _make_data_volumes(
        self, vm: Ref, spec: dict[str, Any], *, cause: Recorded | None
    ) -> None:
        """A VM the controller makes or updates (a pool's) gets the DataVolumes of its
        `dataVolumeTemplates` that do not exist (KubeVirt's VM controller: one that exists is
        used as it is), as `apply` makes a user's: judged like a CreateVolume, owned by the VM."""
        for cmd in data_volume_commands(spec, name=vm.name, namespace=vm.namespace):
            ref = Ref("volume", vm.namespace, cmd.name)
            v = self.volumes.get(ref.prefix) or VolumeState()
            if v.exists:
                continue
            try:
                view = cluster_view(ref, cmd, nodes=self.nodes, volumes=self.volumes, vms=self.vms,
                                    datasources=self.datasources)  # fmt: skip
                events = decide_volume(v, cmd, view)
                if events:
                    await self.store.append(
                        ref, events, expected_version=v.version,
                        causationid=cause.envelope.id if cause else "",
                    )  # fmt: skip
            except (ValidationError, ConcurrencyConflict) as err:
                log.warning("DataVolume %s of %s not made: %s", cmd.name, vm.name, err)

    async def on_record(self, rec: Recorded) -> None:
        kind, key = self._fold(rec)
        data = rec.envelope.data
        if kind == "vm":
            if not isinstance(data, _PROGRESS_ONLY):
                self._reactions.kick(key, rec)
            if isinstance(data, m.MigrationSucceeded) and data.mode == "cold":
                await self._move_volumes_with(self.vms[key], data.target, cause=rec)
            if isinstance(data, m.SnapshotDeleted) and (gone := removal_work(self.vms[key], data)):
                await self._work.send([gone])
            if isinstance(data, m.VMDeleted):  # its dataVolumeTemplates' DataVolumes go too
                kept = leftovers(self.vms[key], self.volumes, self.replica_sets)
                await self._append_ops(kept, cause=rec)  # (or its pool keeps them)
            if isinstance(data, _FREES_CAPACITY):
                await self._retry_unschedulable(rec)
            if isinstance(data, _ENDS_MIGRATION):
                await self._start_queued_migrations(rec)
            s = self.vms[key]
            for owner in owners(s):
                await self.react_rs(owner, cause=rec)
        elif kind in ("rs", "vmpool"):
            await self.react_rs(key, cause=rec)
        elif kind == "volume":
            await self.react_volume(key)
            if isinstance(data, m.VolumeReleased | m.VolumeDeleted):  # a pool VM may go (or come)
                v = self.volumes[key]
                owner = data.owner if isinstance(data, m.VolumeReleased) else v.owner
                vm = self.vms.get(f"virt.vm.{v.namespace}.{owner}")
                for pool in owners(vm) if vm is not None else []:
                    await self.react_rs(pool, cause=rec)
            await self._retry_unschedulable(rec)  # a VM may wait for its volume's node
            for k in waiting_on(key, self.vms):  # or, scheduled, for its data
                self._reactions.kick(k, rec)
        elif kind == "node":
            if isinstance(data, m.NodeLost | m.NodeDrainRequested):
                node = key.rpartition(".")[2]
                for k, s in list(self.vms.items()):
                    if s.node == node:
                        self._reactions.kick(k, rec)
            await self._retry_unschedulable(rec)

    async def _start_queued_migrations(self, cause: Recorded) -> None:
        """A slot freed: the queued migrations get their turn, oldest request first."""
        queued = [(s.migration.requested, k) for k, s in self.vms.items()
                  if s.migration is not None and s.migration.phase == PENDING]  # fmt: skip
        # Kicked in that order through the keyed queue, like every other reaction: tasks start
        # in order, and each holds its slot before it awaits, so the oldest gets the free one.
        for _, k in sorted(queued, key=lambda q: (q[0] or datetime.min.replace(tzinfo=UTC), q[1])):
            self._reactions.kick(k, cause)

    async def _retry_unschedulable(self, cause: Recorded) -> None:
        for k, s in list(self.vms.items()):
            if s.status == UNSCHEDULABLE and k != aggregate_key(cause.subject):
                self._reactions.kick(k, cause)

    # --- loops -----------------------------------------------------------------------------------

    def resync(self) -> None:
        """React to every VM again (level-triggered: what is already right stays as it is)."""
        for key in list(self.vms):
            self._reactions.kick(key)

    async def _act_on_all(self) -> None:
        """React to everything folded so far: at start, and when a standby takes over."""
        self.resync()
        await self._reactions.idle()
        for key in list(self.replica_sets):
            await self.react_rs(key)
        for key in list(self.volumes):
            await self.react_volume(key)

    async def _follow(self, leading: asyncio.Event | None) -> None:
        async for rec in self.follows.follow(from_seq=self.position + 1):
            if leading is not None and not leading.is_set():
                self._fold(rec)  # a standby keeps its state warm and acts on nothing
                continue
            try:
                await self.on_record(rec)
            except VirtbusError as err:  # a bus hiccup must not kill the controller
                log.warning("reacting to seq %s failed: %s", rec.seq, err)
            except Exception:  # nor may one event: reacting to it failed, the next one is read
                log.exception("reacting to seq %s (%s) failed", rec.seq, rec.subject)

    async def _timers(self, stop: asyncio.Event) -> None:
        beats = Heartbeats()
        kv = await self.nc.jetstream().key_value(HEARTBEAT_BUCKET)
        watch = asyncio.create_task(beats.run(kv), name="controller-heartbeats")
        try:
            while not stop.is_set():
                now = datetime.now(UTC)
                for key, at in list(self._wakes.items()):
                    if at <= now:
                        del self._wakes[key]
                        self._reactions.kick(key)
                for key, at in list(self._volume_wakes.items()):
                    if at <= now:
                        del self._volume_wakes[key]
                        await self.react_volume(key)
                # Heartbeats had time to come, and the bucket's own are read.
                if beats.ready.is_set() and time.time() - self._started >= self.node_grace_s:
                    await record_lost(self.store, beats.last, self.nodes,
                                      grace_s=self.node_grace_s)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def run(self, stop: asyncio.Event, *, leading: asyncio.Event | None = None) -> None:
        """Fold the log and keep folding it; act once `leading` is set (None: at once). A
        standby's controller is warm: taking over costs no replay."""
        # No chain check here: a tampered log is for `audit verify` to name; the controller
        # must keep the cluster running on what the log says.
        await self.store.replay(self._fold, verify=False)
        tasks = [asyncio.create_task(self._follow(leading), name="controller-follow")]
        try:
            if leading is not None:
                await either(leading, stop)
            if not stop.is_set():
                await self._act_on_all()
                tasks.append(asyncio.create_task(self._timers(stop), name="controller-timers"))
                await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._reactions.close()
            self._work.close()
