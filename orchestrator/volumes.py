"""Volumes in the control plane: judging `volume create|delete`, node work, and VM placement.

A volume lives on one node (its directory there holds `disk.img`), so it is placed when it is
created and every VM that names it as a `persistentVolumeClaim` must run on that node. Judging a
volume command needs more than the volume's own history (which nodes are ready, which VMs use the
claim): `cluster_view` reads that off the controller's folded state; `decide_volume` stays pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from events import commands as c
from events import model as m
from events import work as w
from events.datasources import PREFIX as DATASOURCE
from events.datasources import DataSourceState, resolve
from events.envelope import Recorded
from events.errors import ValidationError, stale
from events.names import Ref
from events.nodes import NodeState
from events.quantity import parse_quantity
from events.state import RUNNING, SCHEDULED, SCHEDULING, VMState
from events.volumes import BOUND, PENDING, VolumeState, apply_volume, clone_of, clone_source
from orchestrator.scheduler import Request

_ACTIVE = (SCHEDULING, SCHEDULED, RUNNING)
MIN_SIZE = 1 << 20  # qemu-img and libvirt want at least a few sectors; 1 MiB is a sane floor
SOURCES = ("", "upload")
NODE_SOURCES = ("import:", "registry:", "clone:")  # a DataVolume's: the node fills the claim
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")


class ClusterView(msgspec.Struct, frozen=True, kw_only=True):
    """What judging one volume command needs from outside the volume's own history."""

    nodes: dict[str, NodeState] = {}
    volumes_per_node: dict[str, int] = {}
    users: list[str] = []  # VMs (not deleted) in the namespace that name the claim
    running: list[str] = []  # those of them with an instance (scheduled or running)
    clone_source: VolumeState | None = None  # a clone's source claim
    source: str = ""  # the clone a DataVolume's sourceRef resolved to (its DataSource's claim)


def fold_volume(history: Iterable[Recorded]) -> VolumeState:
    s = VolumeState()
    for r in history:
        s = apply_volume(s, r.envelope)
    return s


def claims_of(spec: dict[str, Any]) -> list[str]:
    """The claim names a VM spec's volumes refer to (a `dataVolume` is the claim of its name,
    as CDI makes it)."""
    volumes = ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
    out = []
    for v in volumes:
        claim = v.get("persistentVolumeClaim") if isinstance(v, dict) else None
        if isinstance(claim, dict) and isinstance(claim.get("claimName"), str):
            out.append(claim["claimName"])
        dv = v.get("dataVolume") if isinstance(v, dict) else None
        if isinstance(dv, dict) and isinstance(dv.get("name"), str):
            out.append(dv["name"])
    return out


def _uses(s: VMState, claim: str) -> bool:
    hot = [str((p.volume.get("persistentVolumeClaim") or {}).get("claimName", ""))
           for p in s.hotplug.values()]  # fmt: skip
    return claim in claims_of(s.spec) or claim in hot


def cluster_view(
    ref: Ref, cmd: c.Command, *, nodes: Mapping[str, NodeState],
    volumes: Mapping[str, VolumeState], vms: Mapping[str, VMState],
    datasources: Mapping[str, DataSourceState] | None = None,
) -> ClusterView:  # fmt: skip
    """Nodes and volume counts for a create or a move; the claim's users for a delete or a move,
    read off the folded nodes, volumes and VMs (the controller's, keyed by subject prefix); a
    sourceRef resolved through the DataSources (or CDI's refusal naming `spec.sourceRef`)."""
    placing = isinstance(cmd, c.CreateVolume | c.MoveVolume)
    counts: dict[str, int] = {}
    users: list[VMState] = []
    clone, source = None, ""
    if placing:
        for v in volumes.values():
            if v.exists and v.node:
                counts[v.node] = counts.get(v.node, 0) + 1
        made = volumes.get(ref.prefix)
        if isinstance(cmd, c.CreateVolume) and cmd.source.startswith(DATASOURCE):
            if made is not None and made.exists:  # CDI reads a sourceRef at create only
                source = made.source
            else:
                known = datasources or {}
                ns, name = resolve(cmd.source, known=lambda n, d: known.get(
                    f"virt.datasource.{n}.{d}"))  # fmt: skip
                source = clone_source(ns, name, into=ref.namespace)
        if isinstance(cmd, c.CreateVolume) and (source or cmd.source).startswith("clone:"):
            ns, name = clone_of(source or cmd.source, ref.namespace)
            clone = volumes.get(f"virt.volume.{ns}.{name}")
    if isinstance(cmd, c.DeleteVolume | c.MoveVolume):
        mine = f"virt.vm.{ref.namespace}."
        users = [
            s for k, s in vms.items() if k.startswith(mine) and s.exists and _uses(s, ref.name)
        ]
    return ClusterView(
        nodes={n.name: n for n in nodes.values()} if placing else {}, volumes_per_node=counts,
        users=sorted(s.name for s in users),
        running=sorted(s.name for s in users if s.node and s.phase in _ACTIVE), clone_source=clone,
        source=source,
    )  # fmt: skip


def _reject(reason: str, field: str = "") -> ValidationError:
    return ValidationError(reason, field=field)


def decide_volume(v: VolumeState, cmd: c.Command, view: ClusterView) -> list[m.Event]:
    """The events a volume command stands for, or a ValidationError naming the field."""
    match cmd:
        case c.CreateVolume():
            return _create(v, cmd, view)
        case c.DeleteVolume():
            if not v.exists:
                raise _reject(f'persistentvolumeclaims "{cmd.name}" not found', "name")
            if v.moving_to:
                raise _reject(f'persistentvolumeclaims "{cmd.name}" is moving to '
                              f"{v.moving_to}; delete it after the move", "name")  # fmt: skip
            if view.users:
                vms = ", ".join(f'"{u}"' for u in view.users)
                raise _reject(
                    f'persistentvolumeclaims "{cmd.name}" is in use by virtualmachine {vms}; '
                    "delete the VM or remove the volume from its spec first", "name",
                )  # fmt: skip
            return [m.VolumeDeleted()]
        case c.MoveVolume():
            return _move(v, cmd, view)
    raise _reject(f"{type(cmd).__name__} does not apply to a volume", "kind")


def _create(v: VolumeState, cmd: c.CreateVolume, view: ClusterView) -> list[m.Event]:
    if view.source:  # a sourceRef: the DataVolume clones what its DataSource names now
        cmd = msgspec.structs.replace(cmd, source=view.source)
    if not cmd.size and cmd.source.startswith("clone:"):  # CDI sizes it as its source
        made = v.size_bytes if v.exists else _clone_source(cmd, view).size_bytes
        cmd = msgspec.structs.replace(cmd, size=str(made))
    size = parse_quantity(cmd.size, field="size")
    if size < MIN_SIZE:
        raise _reject(f"size: {cmd.size!r} is below the minimum volume size of 1Mi", "size")
    if cmd.source not in SOURCES and not cmd.source.startswith(("http://", "https://",
                                                                *NODE_SOURCES)):  # fmt: skip
        raise _reject(f"source: {cmd.source!r}: use upload or an http(s) URL", "source")
    for mode in cmd.access_modes:
        if mode not in ACCESS_MODES:
            raise _reject(f"accessModes: Unsupported value: {mode!r}: supported values: "
                          + ", ".join(f'"{a}"' for a in ACCESS_MODES), "accessModes")  # fmt: skip
    name = f'persistentvolumeclaims "{cmd.name}"'
    if cmd.expected_version and cmd.expected_version != v.version:  # the CLI reads again
        raise _reject(stale("persistentvolumeclaims", cmd.name), "metadata.resourceVersion")
    if v.exists:
        if not cmd.apply:
            raise _reject(f"{name} already exists", "name")
        if v.size_bytes != size:
            raise _reject(f"{name} is forbidden: spec.resources.requests.storage: virtbus does "
                          "not resize claims", "spec.resources.requests.storage")  # fmt: skip
        if v.source != cmd.source or v.storage_class != cmd.storage_class:
            raise _reject(f"{name} is forbidden: spec is immutable after creation except "
                          "resources.requests for bound claims", "spec")  # fmt: skip
        if v.labels != cmd.labels:  # a VM that inferred from them keeps what its spec recorded
            return [m.VolumeLabeled(labels=dict(cmd.labels))]
        return []  # kubectl apply of what is there: unchanged
    node = "" if not cmd.source and cmd.node is None else None  # WaitForFirstConsumer
    if cmd.source.startswith("clone:"):
        node = _clone_node(cmd, size, view)
    created = m.VolumeCreated(
        size_bytes=size, node=_node_for(cmd, view) if node is None else node, source=cmd.source,
        access_modes=list(cmd.access_modes), storage_class=cmd.storage_class,
        data_volume=cmd.data_volume, owner=cmd.owner, labels=dict(cmd.labels),
    )  # fmt: skip
    return [created]


def _clone_source(cmd: c.CreateVolume, view: ClusterView) -> VolumeState:
    src, name = view.clone_source, cmd.source.removeprefix("clone:").rpartition("/")[2]
    if src is None or not src.exists:
        raise _reject(f'source.pvc: persistentvolumeclaims "{name}" not found', "source.pvc")
    if src.phase != BOUND or not src.node:
        raise _reject(f'source.pvc: persistentvolumeclaims "{name}" is {src.phase or "Pending"}; '
                      "a clone needs a Bound source", "source.pvc")  # fmt: skip
    return src


def _clone_node(cmd: c.CreateVolume, size: int, view: ClusterView) -> str:
    """A clone is made where its source is (CDI's host-assisted clone, on the source's node)."""
    src = _clone_source(cmd, view)
    if size < src.size_bytes:
        raise _reject("target resources requests storage size is smaller than the source",
                      "spec.storage.resources.requests.storage")  # fmt: skip
    return src.node


def _move(v: VolumeState, cmd: c.MoveVolume, view: ClusterView) -> list[m.Event]:
    name = f'persistentvolumeclaims "{cmd.name}"'
    if not v.exists:
        raise _reject(f"{name} not found", "name")
    if v.moving_to:
        raise _reject(f"{name} is already moving to {v.moving_to}", "name")
    if v.phase != BOUND:
        raise _reject(f"{name} is {v.phase}; only a Bound volume can move", "name")
    if cmd.node == v.node:
        raise _reject(f"node: {name} is on {v.node} already", "node")
    if view.running:
        vms = ", ".join(f'"{u}"' for u in view.running)
        raise _reject(f"{name} is in use by running virtualmachine {vms}; stop it first", "name")
    return [m.VolumeMoveRequested(node=_node_for(cmd, view))]


def _node_for(cmd: c.CreateVolume | c.MoveVolume, view: ClusterView) -> str:
    if cmd.node is not None:
        node = view.nodes.get(cmd.node)
        if node is None:
            raise _reject(f'node: nodes "{cmd.node}" not found', "node")
        if not node.schedulable:
            state = "cordoned" if node.cordoned else node.status
            raise _reject(f'node: node "{cmd.node}" is {state}; it takes no new volumes', "node")
        return cmd.node
    ready = [n for n in view.nodes.values() if n.schedulable]
    if not ready:
        raise _reject("node: no ready node can hold the volume", "node")
    return min(ready, key=lambda n: (view.volumes_per_node.get(n.name, 0), n.name)).name


def volume_work(v: VolumeState, *, now: datetime) -> list[w.Work]:
    """Node work for a volume as the log has it: level-triggered, deduplicated by message id."""
    base: dict[str, Any] = {"namespace": v.namespace, "name": v.name, "node": v.node}
    if v.exists and v.phase == PENDING and v.node:  # "": waiting for its first consumer
        if v.retry_at is not None and now < v.retry_at:
            return []  # its last fill failed: the next waits out the back-off
        return [w.ProvisionVolume(version=v.created_version, size_bytes=v.size_bytes,
                                  source=v.source, attempt=v.restarts, **base)]  # fmt: skip
    if v.exists and v.moving_to:  # the target pulls the data from the node that has it
        return [w.MoveVolume(namespace=v.namespace, name=v.name, node=v.moving_to,
                             version=v.move_version, source_node=v.node,
                             size_bytes=v.size_bytes)]  # fmt: skip
    if v.exists and v.moved_from and v.moved_from != v.node:
        return [w.RemoveVolume(namespace=v.namespace, name=v.name, node=v.moved_from,
                               version=v.moved_version)]  # fmt: skip
    if not v.exists and v.deleted_version and v.node:
        return [w.RemoveVolume(version=v.deleted_version, **base)]
    return []


def follow_cold_move(
    s: VMState, target: str, volumes: Mapping[str, VolumeState], vms: Mapping[str, VMState]
) -> list[tuple[Ref, m.Event, int]]:
    """A stopped VM moved to `target`: its volumes go with it (definition and disks move
    together), each by the same move `volume move` asks for; one another running VM uses stays."""
    busy = {c for o in vms.values() if o.running and o.name != s.name and o.namespace ==
            s.namespace for c in claims_of(o.spec)}  # fmt: skip
    out: list[tuple[Ref, m.Event, int]] = []
    for claim in claims_of(s.spec):
        v = volumes.get(f"virt.volume.{s.namespace}.{claim}")
        if (
            v is None
            or not v.exists
            or not v.node
            or v.node == target
            or v.moving_to
            or (claim in busy)
        ):
            continue
        move: m.Event = m.VolumeMoveRequested(node=target)
        out.append((Ref("volume", s.namespace, claim), move, v.version))
    return out


def pin(req: Request, spec: dict[str, Any], volumes: Mapping[str, VolumeState],
        *, namespace: str, assumed: Mapping[str, str]) -> Request:  # fmt: skip
    """`req` restricted to the nodes holding the VM's claims, or about to (`assumed`: an unbound
    claim's node chosen by a placement whose binding is not folded yet). A claim not known
    stays free: the node reports `ErrorPvcNotFound` when it starts the VM."""
    found = {
        key: v
        for claim in claims_of(spec)
        if (v := volumes.get(key := f"virt.volume.{namespace}.{claim}")) is not None and v.exists
    }
    if any(v.moving_to for v in found.values()):  # nowhere until the copy is done
        return msgspec.structs.replace(req, nodes=frozenset())
    # (an unbound claim nobody assumed goes where the VM goes)
    held = {v.node or assumed.get(key, "") for key, v in found.items()} - {""}
    return msgspec.structs.replace(req, nodes=frozenset(held)) if held else req


def assume(spec: dict[str, Any], volumes: Mapping[str, VolumeState], *, namespace: str,
           node: str, assumed: dict[str, str]) -> list[str]:  # fmt: skip
    """Note the VM's unbound claims as going to `node`, where it was just placed; the keys
    noted (to forget if the placement is not recorded)."""
    noted = []
    for claim in claims_of(spec):
        key = f"virt.volume.{namespace}.{claim}"
        v = volumes.get(key)
        if v is not None and v.exists and not v.node and key not in assumed:
            assumed[key] = node
            noted.append(key)
    return noted


def claims_for(s: VMState, item: w.Work) -> list[str]:
    """The claims a start (the VM's spec) or a hotplug (its one volume) needs on the node."""
    if isinstance(item, w.AttachVolume):
        return claims_of({"template": {"spec": {"volumes": [item.volume]}}})
    return claims_of(s.spec)


def bind_claims(
    claims: list[str], volumes: Mapping[str, VolumeState], *, namespace: str, node: str
) -> tuple[list[Ref], bool]:
    """WaitForFirstConsumer, for a VM placed on `node`: the claims to bind there (each by a
    `VolumeNodeSelected`), and whether its start or hotplug may go (every known claim Bound, or
    Failed or elsewhere, which the node reports; a claim being made here is waited for)."""
    bind: list[Ref] = []
    ready = True
    for claim in claims:
        v = volumes.get(f"virt.volume.{namespace}.{claim}")
        if v is None or not v.exists or v.phase != PENDING:
            continue
        if not v.node:
            bind.append(Ref("volume", namespace, claim))
            ready = False
        elif v.node == node:
            ready = False  # its node is making (or importing) it: the start waits
    return bind, ready


def waiting_on(key: str, vms: Mapping[str, VMState]) -> list[str]:
    """The VMs (keys) that may wait for the claim at `key`: scheduled and not started yet, or
    running with a hotplug of it pending."""
    _, _, namespace, claim = key.split(".", 3)
    return [k for k, s in vms.items() if s.namespace == namespace and s.node and (
        (s.phase == SCHEDULING and claim in claims_of(s.spec))
        or any(claim in claims_of({"template": {"spec": {"volumes": [p.volume]}}})
               for p in s.hotplug.values()))]  # fmt: skip
