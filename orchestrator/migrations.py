"""Migration decisions, pure: whether a MigrateVM may go ahead, and what a migration needs next.

virt-api's checks (a running VMI, no migration in flight, a target that exists, is schedulable,
fits and is not the source) answer the command; the controller then walks each migration through
KubeVirt's phases (Pending -> Scheduling -> Scheduled -> TargetReady -> Running -> Succeeded or
Failed), holding queued ones back while the parallel limits are reached. Between two QEMU nodes
that announce a migration URI the move is live; anywhere else (libvirt's test driver cannot
migrate) it is a cold move that says so: the guest restarts on the target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from events import commands as c
from events import model as m
from events import work as w
from events.errors import ValidationError
from events.kubevirt import EVICTION_STRATEGIES, policy_from_config
from events.manifest import summarize
from events.names import check_name
from events.nodes import READY, NodeState
from events.state import (
    FAILED,
    PENDING,
    PREPARING_TARGET,
    RUNNING,
    SCHEDULED,
    SCHEDULING,
    STOPPED,
    STOPPING,
    SUCCEEDED,
    TARGET_READY,
    TERMINATING,
    VMState,
    migration_active,
)
from orchestrator.resize import moved_spec
from orchestrator.scheduler import NodeView, Request, Unschedulable, place

Step = tuple[list[m.Event], list[w.Work]]
ACTIVE_PHASES = (SCHEDULING, SCHEDULED, PREPARING_TARGET, TARGET_READY, RUNNING)
_BEFORE_READY = (SCHEDULING, SCHEDULED, PREPARING_TARGET)  # hold a parallelism slot


class Cluster(msgspec.Struct, frozen=True, kw_only=True):
    """What a migration decision needs beyond the VM: nodes, their load, the free slots."""

    nodes: Mapping[str, NodeState]
    views: Callable[[], list[NodeView]]
    slot_free: Callable[[str], bool]  # may one more migration leave this source node now?
    policy: w.MigrationPolicy = w.MigrationPolicy()  # the cluster's, or the VM's policy over it
    policy_name: str = ""  # that MigrationPolicy ("": the cluster's settings)
    eviction_strategy: str = "None"  # the KubeVirt object's spec.configuration.evictionStrategy


def load_policy(path: Path) -> w.MigrationPolicy:
    """`policy_from_config` of a YAML file."""
    try:
        return policy_from_config(yaml.safe_load(path.read_text()) or {})
    except OSError as err:
        raise ValidationError(f"migrations: {path}: {err.strerror or err}",
                              field="migrations") from None  # fmt: skip
    except UnicodeDecodeError as err:
        raise ValidationError(f"migrations: {path}: not UTF-8 text ({err.reason} at byte "
                              f"{err.start})", field="migrations") from None  # fmt: skip
    except yaml.YAMLError as err:
        raise ValidationError(f"migrations: {path}: {err}", field="migrations") from err


def migration_name(cmd: c.MigrateVM) -> str:
    """The VMIM's name: the manifest's, else virtctl's `kubevirt-migrate-vm-<5>`, from the id."""
    if cmd.migration:
        return check_name(cmd.migration, field="metadata.name")
    return f"kubevirt-migrate-vm-{hashlib.sha1(cmd.id.encode()).hexdigest()[:5]}"


def _target_misfit(s: VMState, target: str, views: Sequence[NodeView]) -> str:
    if target == s.node:
        return f'the VMI is already running on node "{target}"; pick another target'
    view = next((v for v in views if v.name == target), None)
    if view is None:
        return f'nodes "{target}" not found'
    try:
        place(_request(s), [view])
    except Unschedulable as err:
        return f'node "{target}": {err.message}'
    return ""


def _request(s: VMState) -> Request:
    need = summarize(s.spec)
    return Request(cpus=need["cpus"], memory_bytes=need["memory_bytes"],
                   node_selector=need["node_selector"])  # fmt: skip


def decide_migrate(
    s: VMState, cmd: c.MigrateVM, *, nodes: Sequence[NodeView] | None = None, reason: str = ""
) -> list[m.Event]:
    """virt-api's admission of a migration; `nodes` (when known) checks the target too.

    A stopped VM migrates cold at once on virtbus's verb (not a VMIM: KubeVirt has no VMI to move
    then): its definition moves to the target, where its next start goes (its disks' data is the
    volumes' business)."""
    if _reapplied(s, cmd):
        return []  # the same VMIM applied again: kubectl's "unchanged"
    field = "spec.vmiName" if cmd.vmim else "name"
    if not cmd.vmim and not s.running and s.status == STOPPED:
        return _cold_stopped(s, cmd, nodes=nodes)
    if s.phase != RUNNING or s.status in (STOPPING, TERMINATING):
        # virt-api's subresource speaks of the VM virtctl named; the VMIM is about its VMI
        raise ValidationError("VMI is not running" if cmd.vmim else "VM is not running",
                              field=field)  # fmt: skip
    if migration_active(s.migration):
        assert s.migration is not None
        raise ValidationError(
            f"in-flight migration detected. Active migration job ({s.migration.id}) is currently "
            f"already in progress for VMI {s.name}.", field=field,
        )  # fmt: skip
    if cmd.target_node and nodes is not None:
        if why := _target_misfit(s, cmd.target_node, nodes):
            raise ValidationError(why, field="target_node")
    elif cmd.target_node == s.node:
        raise ValidationError(_target_misfit(s, s.node, []), field="target_node")
    return [m.MigrationRequested(migration=migration_name(cmd), target_node=cmd.target_node or "",
                                 reason=reason)]  # fmt: skip


def _reapplied(s: VMState, cmd: c.MigrateVM) -> bool:
    return bool(cmd.migration) and s.migration is not None and s.migration.id == cmd.migration


def admit_vmim(s: VMState, cmd: c.MigrateVM) -> None:
    """virt-api's migration-create admitter on the VMI a VirtualMachineInstanceMigration names,
    in its words: there must be one (a stopped VM has none), and it must not have ended."""
    if s.exists and _reapplied(s, cmd):
        return
    if not s.exists or not s.phase:
        raise ValidationError(f'the VMI "{cmd.namespace}/{cmd.name}" does not exist',
                              field="spec.vmiName")  # fmt: skip
    if s.phase in (SUCCEEDED, FAILED):
        raise ValidationError("Cannot migrate VMI in finalized state.", field="spec.vmiName")


def _cold_stopped(
    s: VMState, cmd: c.MigrateVM, *, nodes: Sequence[NodeView] | None
) -> list[m.Event]:
    here = s.home
    if cmd.target_node:
        if cmd.target_node == here:
            raise ValidationError(f'the VM is already on node "{here}"', field="target_node")
        target = cmd.target_node
        view = next((v for v in nodes or [] if v.name == target), None)
        if nodes is not None and view is None:
            raise ValidationError(f'nodes "{target}" not found', field="target_node")
        if view is not None and not view.schedulable:
            raise ValidationError(f'node "{target}": 0/1 nodes are available: 1 node(s) were '
                                  "unschedulable.", field="target_node")  # fmt: skip
    elif nodes is None:
        raise ValidationError("a stopped VM needs a target node (--to)", field="target_node")
    else:
        try:
            target = place(_request(s), [v for v in nodes if v.name != here])
        except Unschedulable as err:
            raise ValidationError(f"no node to migrate to: {err.message}",
                                  field="target_node") from None  # fmt: skip
    mig = migration_name(cmd)
    return [
        m.MigrationScheduled(migration=mig, source=here, target=target, live=False),
        m.MigrationSucceeded(migration=mig, source=here, target=target, mode="cold"),
    ]


def decide_cancel(s: VMState, cmd: c.CancelMigration) -> list[m.Event]:
    if not migration_active(s.migration):
        raise ValidationError(f"no migration in progress for VMI {s.name}", field="name")
    assert s.migration is not None
    if s.migration.cancel:
        raise ValidationError(f"migration {s.migration.id} is already being cancelled",
                              field="name")  # fmt: skip
    return [m.MigrationCancelRequested(migration=s.migration.id)]


def _work(s: VMState, kind: type[w.MigrationWork], node: str, **extra: Any) -> w.MigrationWork:
    mig = s.migration
    assert mig is not None
    return kind(
        namespace=s.namespace, name=s.name, node=node, vmi_uid=s.vmi_uid,
        version=s.version, migration=mig.id, source=mig.source, target=mig.target,
        live=mig.live, **extra,
    )  # fmt: skip


def _failed(s: VMState, reason: str, *, aborted: bool = False) -> Step:
    assert s.migration is not None
    return [m.MigrationFailed(migration=s.migration.id, reason=reason, aborted=aborted)], []


def decide_node(n: NodeState, cmd: c.Command) -> list[m.Event]:
    """`drain` and `uncordon`: idempotent like kubectl's (a second drain changes nothing)."""
    if n.registered is None:
        raise ValidationError(f'nodes "{cmd.name}" not found', field="name")
    match cmd:
        case c.DrainNode():
            return [] if n.draining else [m.NodeDrainRequested()]
        case c.UncordonNode():
            return [m.NodeUncordoned()] if n.cordoned else []
    raise ValidationError(f"{type(cmd).__name__} does not apply to a node", field="kind")


def eviction_strategy(s: VMState, *, cluster_default: str = "None") -> str:
    """`spec.template.spec.evictionStrategy`, else the cluster's (the KubeVirt object's, whose
    default is None)."""
    strategy = ((s.spec.get("template") or {}).get("spec") or {}).get("evictionStrategy")
    return strategy if strategy in EVICTION_STRATEGIES else cluster_default


def _evict(s: VMState, node: NodeState, cluster: Cluster) -> list[m.Event] | None:
    """A VM on a draining node: moved off per its eviction strategy (None: nothing to do)."""
    if s.phase != RUNNING or s.status in (STOPPING, TERMINATING) or migration_active(s.migration):
        return None
    strategy = eviction_strategy(s, cluster_default=cluster.eviction_strategy)
    if strategy == "External":
        return None  # someone else moves it, as in KubeVirt
    last = s.migration
    tried = last is not None and last.source == s.node and node.drain_requested is not None and (
        last.requested is not None and last.requested >= node.drain_requested)  # fmt: skip
    live = bool(node.migration_uri) and any(
        n.migration_uri and n.schedulable and n.name != s.node for n in cluster.nodes.values()
    )
    migrate = strategy == "LiveMigrate" or (strategy == "LiveMigrateIfPossible" and live)
    if migrate and not tried:
        digest = hashlib.sha1(f"{s.vmi_uid}:{s.version}".encode()).hexdigest()[:5]
        return [m.MigrationRequested(migration=f"kubevirt-evacuation-{digest}",
                                     reason=f"node {s.node} is drained")]  # fmt: skip
    if strategy == "LiveMigrate":
        return None  # the migration failed: the VM stays, the drain waits (KubeVirt's too)
    # None, or a migration that is not possible: the VMI goes; its run strategy decides the rest.
    if s.run_strategy in ("Always", "RerunOnFailure"):
        return [m.VMRestartRequested()]  # comes back on a schedulable node
    return [m.VMStopRequested()]


def migration_step(s: VMState, cluster: Cluster) -> Step | None:
    """What the VM's migration needs next; None when it needs nothing (or there is none)."""
    mig = s.migration
    node = cluster.nodes.get(s.node)
    if node is not None and node.draining and (evicted := _evict(s, node, cluster)) is not None:
        return evicted, []
    if mig is None:
        return None
    if mig.phase == FAILED:  # a failed target keeps nothing: its launcher goes
        return ([], [_work(s, w.CleanupTarget, mig.target)]) if mig.target_pod else None
    if not migration_active(mig):
        return None
    if s.status in (STOPPING, TERMINATING):  # the stop wins: the migration is called off
        why = "the VM is being stopped" if s.status == STOPPING else "the VM is being deleted"
        if mig.phase == RUNNING:
            return [], [_work(s, w.AbortMigration, s.node, reason=why)]
        return _failed(s, why, aborted=True)
    if s.phase != RUNNING or not s.node:
        return _failed(s, "the VMI stopped running before the migration completed")
    if mig.phase == PENDING:
        if mig.cancel:
            return _failed(s, "canceled by the user before it was scheduled", aborted=True)
        return _schedule(s, cluster) if cluster.slot_free(s.node) else ([], [])
    target = cluster.nodes.get(mig.target)
    if mig.phase != RUNNING and (target is None or target.status != READY):
        # Once the job runs, libvirt on the source tells how it ended.
        return _failed(s, f"target node {mig.target} was lost")
    if mig.reason and mig.phase in _BEFORE_READY:  # the target's launcher died
        return _failed(s, f"target launcher failed: {mig.reason}")
    if mig.cancel and mig.phase != RUNNING:
        return _failed(s, "canceled by the user before the migration started", aborted=True)
    if mig.phase in _BEFORE_READY:
        return [], [_work(s, w.PrepareTarget, mig.target, spec=moved_spec(s))]
    uri = target.migration_uri if target else ""
    source = _work(s, w.MigrateSource, s.node, target_uri=uri, policy=cluster.policy)
    if mig.phase == RUNNING and mig.cancel:
        return [], [source, _work(s, w.AbortMigration, s.node)]
    return [], [source]


def _schedule(s: VMState, cluster: Cluster) -> Step:
    mig = s.migration
    assert mig is not None
    views = cluster.views()
    if mig.target:
        if why := _target_misfit(s, mig.target, views):
            return _failed(s, why)
        target = mig.target
    else:
        try:
            target = place(_request(s), [v for v in views if v.name != s.node])
        except Unschedulable as err:
            return _failed(s, f"no node to migrate to: {err.message}")
    src, dst = cluster.nodes.get(s.node), cluster.nodes.get(target)
    live = bool(src and dst and src.migration_uri and dst.migration_uri)
    return [m.MigrationScheduled(migration=mig.id, source=s.node, target=target, live=live,
                                 policy=cluster.policy_name)], []  # fmt: skip
