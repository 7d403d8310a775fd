"""What the controller knows: the whole log folded in memory (VMs, nodes, replica sets and
pools, volumes, instance types, the KubeVirt configuration), with placement's bookkeeping kept
current as it folds. Kept apart from what the controller does with it (`controller.py`); the
intake beside it judges against this state (`node_views`, `volume_view`, the admissions) after
`caught_up`, rather than reading the log again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.client import Client

from bus.crashpoints import crash_at
from events import commands as c
from events import work as w
from events.datasources import DataSourceState, apply_datasource
from events.envelope import Recorded
from events.folding import skipped_now
from events.infer import infer
from events.instancetypes import KIND_OF, InstancetypeState, apply_instancetype
from events.migration_policies import PolicyState, apply_policy, match_policy, with_policy
from events.names import Ref, aggregate_key
from events.nodes import NodeState, apply_node
from events.replicasets import ReplicaSetState, apply_rs
from events.services import ServiceState, apply_service
from events.state import VMState, apply, migration_active
from events.volumes import VolumeState, apply_volume
from orchestrator import metrics
from orchestrator.capacity import Capacity
from orchestrator.instancetypes import admit, effective
from orchestrator.ipam import AddressPool
from orchestrator.kubevirt import Settings, needs_config
from orchestrator.nodeports import NodePortPool, ServicePorts
from orchestrator.scheduler import NodeView
from orchestrator.volumes import ClusterView, cluster_view

log = logging.getLogger("virtbus.controller")
CATCH_UP_S = 5.0  # how long a judgement waits for the controller to fold the log's end


class Folded:
    def __init__(
        self, nc: Client, *, stream: str, migration_policy: w.MigrationPolicy | None = None,
        vmi_cidr: str | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.stream = stream
        self.addresses = AddressPool(vmi_cidr)
        self.node_ports = NodePortPool()
        self.services: dict[str, ServiceState] = {}
        self.datasources: dict[str, DataSourceState] = {}  # what sourceRefs resolve through
        self.settings = Settings(migration_policy)  # the KubeVirt object: the source of truth
        self.capacity = Capacity(self.settings.config.migrations)
        self.vms: dict[str, VMState] = {}
        self.nodes: dict[str, NodeState] = {}
        self.replica_sets: dict[str, ReplicaSetState] = {}
        self.volumes: dict[str, VolumeState] = {}
        # An unbound claim -> the node a VM using it was just placed on, until the claim's own
        # binding is folded: a second VM placed meanwhile goes there too (the scheduler's assume
        # cache), not to a node the claim will not be on.
        self.assumed: dict[str, str] = {}
        self.instancetypes: dict[str, InstancetypeState] = {}  # and preferences, by subject key
        self.migration_policies: dict[str, PolicyState] = {}  # by name (cluster-wide)
        self.position = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (seq, caught up to it)

    def migration_settings(
        self, s: VMState, cluster: w.MigrationPolicy
    ) -> tuple[w.MigrationPolicy, str]:
        """What a migration of `s` runs by, and the MigrationPolicy that says so ("" for none):
        the policy it was scheduled under, or the one KubeVirt's controller would choose now."""
        if s.migration is None:
            return cluster, ""
        if named := s.migration.policy:
            policy = self.migration_policies.get(named)
            return with_policy(cluster, policy if policy and policy.exists else None), named
        template = s.spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        chosen = match_policy(self.migration_policies.values(), vmi_labels=labels,
                              namespace=s.namespace)  # fmt: skip
        return with_policy(cluster, chosen), chosen.name if chosen else ""

    # --- folding ---------------------------------------------------------------------------------

    def _fold(self, rec: Recorded) -> tuple[str, str]:
        """Fold one event; a fault in the bookkeeping around the fold skips it, logged."""
        try:
            folded = self._fold_one(rec)
            crash_at("seen", [rec.envelope.data])  # folded, not yet reacted to
            return folded
        except Exception:
            log.exception("event at seq %s (%s) skipped: it could not be folded", rec.seq,
                          rec.subject)  # fmt: skip
            metrics.UNFOLDABLE.inc()
            self.position = rec.seq
            return "", ""
        finally:
            if self._waiters:
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiting = []
        for seq, fut in self._waiters:
            if seq <= self.position:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((seq, fut))
        self._waiters = waiting

    async def caught_up(self) -> None:
        """Return once this controller has folded the log as it stands now: what the intake
        reads off it then is what a read of the log would have said."""
        last = (await self.nc.jetstream().stream_info(self.stream)).state.last_seq
        if self.position >= last:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((last, fut))
        try:
            await asyncio.wait_for(fut, CATCH_UP_S)
        except TimeoutError:  # e.g. the last message is no event: it is never folded
            self._waiters = [(q, f) for q, f in self._waiters if f is not fut]
            log.warning("the controller is at seq %s, not %s; judging on what it has",
                        self.position, last)  # fmt: skip

    async def vm_admission(self, ref: Ref, spec: dict[str, Any]) -> None:
        """Raise KubeVirt's refusal when the VM's instance type or preference is missing, or a
        feature it uses is behind a gate that is off."""
        await self.caught_up()
        vm = self.vms.get(ref.prefix)  # its captured revisions size it, whatever became of them
        admit(spec, namespace=ref.namespace, known=self.instancetypes,
              captured=vm.revisions if vm is not None else None, vms=self.vms)  # fmt: skip
        self.settings.admit(ref, c.StartVM(name=ref.name, namespace=ref.namespace), spec)

    async def vm_inference(self, ref: Ref, spec: dict[str, Any]) -> dict[str, Any]:
        """The VM spec with its `inferFromVolume` matchers resolved from the claims' labels as
        they stand in the log now (KubeVirt's mutating webhook, at the VM's apply)."""
        await self.caught_up()
        volumes, datasources = self.volumes, self.datasources
        return infer(spec, namespace=ref.namespace,
                     claims=lambda ns, name: volumes.get(f"virt.volume.{ns}.{name}"),
                     datasources=lambda ns, name: datasources.get(
                         f"virt.datasource.{ns}.{name}"))  # fmt: skip

    async def admission(self, ref: Ref, cmd: c.Command) -> None:
        """Raise KubeVirt's refusal of a command the configuration does not allow (a gate that
        is off; a second KubeVirt object); commands no gate concerns pass without a wait."""
        if needs_config(cmd):
            await self.caught_up()
            self.settings.admit(ref, cmd, getattr(cmd, "spec", None))

    async def volume_view(self, ref: Ref, cmd: c.Command) -> ClusterView:
        """What judging a volume command needs besides the volume's own history."""
        await self.caught_up()
        return cluster_view(ref, cmd, nodes=self.nodes, volumes=self.volumes, vms=self.vms,
                            datasources=self.datasources)  # fmt: skip

    async def service_ports(self, ref: Ref) -> ServicePorts:
        """The nodePort pool as the Service `ref`'s judgement sees it, with the log folded."""
        await self.caught_up()
        return self.node_ports.of(ref)

    def _fold_one(self, rec: Recorded) -> tuple[str, str]:
        kind, _, rest = rec.subject.removeprefix("virt.").partition(".")
        key = aggregate_key(rec.subject)
        if kind == "vm":
            before = self.vms.get(key)
            s = self.vms[key] = apply(before or VMState(), rec.envelope)
            if (skip := skipped_now(before, s)) is not None:
                log.warning("event at seq %s (%s, %s) skipped by the fold: %s", rec.seq,
                            rec.subject, skip.type, skip.reason)  # fmt: skip
                metrics.UNFOLDABLE.inc()
            # Accounted at its effective size: an instance type sizes what it holds.
            self.capacity.folded(key, effective(s, known=self.instancetypes, vms=self.vms)[0],
                                 rec.envelope.data)  # fmt: skip
            self.addresses.folded(key, s)
        elif kind == "node":
            name = rest.split(".")[1]
            self.nodes[name] = apply_node(self.nodes.get(name) or NodeState(), rec.envelope)
        elif kind in ("rs", "vmpool"):
            rs = self.replica_sets.get(key) or ReplicaSetState()
            self.replica_sets[key] = apply_rs(rs, rec.envelope)
        elif kind == "volume":
            v = self.volumes[key] = apply_volume(self.volumes.get(key) or VolumeState(),
                                                 rec.envelope)  # fmt: skip
            if v.node or not v.exists:
                self.assumed.pop(key, None)
        elif kind in KIND_OF:
            it = self.instancetypes.get(key) or InstancetypeState()
            self.instancetypes[key] = apply_instancetype(it, rec.envelope)
        elif kind == "migrationpolicy":
            name = rest.split(".")[1]
            policy = self.migration_policies.get(name) or PolicyState()
            self.migration_policies[name] = apply_policy(policy, rec.envelope)
        elif kind == "service":
            svc = self.services[key] = apply_service(self.services.get(key) or ServiceState(),
                                                     rec.envelope)  # fmt: skip
            self.node_ports.folded(key, svc)
        elif kind == "datasource":
            ds = self.datasources.get(key) or DataSourceState()
            self.datasources[key] = apply_datasource(ds, rec.envelope)
        elif kind == "kubevirt":
            self.settings.folded(key, rec.envelope)
            self.capacity.policy = self.settings.config.migrations
        self.position = rec.seq
        return kind, key

    # --- placement -------------------------------------------------------------------------------

    def node_views(self) -> list[NodeView]:
        return self.capacity.node_views(self.nodes, kvm_only=not self.settings.config.use_emulation)

    def active_migrations(self) -> dict[tuple[str, str], str]:
        """(namespace, migration name) -> its VM, for every migration not concluded."""
        return {(s.namespace, s.migration.id): s.name for s in self.vms.values()
                if s.migration is not None and migration_active(s.migration)}  # fmt: skip
