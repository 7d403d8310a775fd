"""What `kubectl get` prints, from folded states: objects, lists and tables in KubeVirt's shapes.

Users read virtbus with the habits (and the scripts) they have for KubeVirt, so field names,
status strings, column headers, AGE formatting and column padding follow kubectl and KubeVirt
exactly; fields the log cannot back are left out rather than invented. Pure: no I/O, no clock
unless `now` is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import yaml

from events.nodes import READY, NodeState
from events.snapshots import volume_snapshot_statuses
from events.state import FAILED, SUCCEEDED, VMState, conditions
from events.vmstate import MemoryDump

KUBEVIRT_API: Final = "kubevirt.io/v1"
NODE_API: Final = "virtbus.io/v1"

# kubectl's tabwriter: minimum cell width 6, 3 spaces of padding, the last column unpadded.
_MIN_WIDTH: Final = 6
_PADDING: Final = 3
_BINARY_SUFFIXES: Final = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30),
                           ("Mi", 2**20), ("Ki", 2**10))  # fmt: skip
_DECIMAL_SUFFIXES: Final = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9),
                            ("M", 10**6), ("k", 10**3))  # fmt: skip
# KubeVirt's VMI conditions; RestartRequired is a VM-only condition.
_VMI_CONDITIONS: Final = frozenset({"Ready", "Paused", "PodScheduled"})


# --- small formatters ----------------------------------------------------------------------------


def timestamp(t: datetime | None) -> str | None:
    """RFC 3339 in UTC with a 'Z', at second precision like metav1.Time; None stays None."""
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(seconds: float) -> str:
    """kubectl's AGE (apimachinery's `HumanDuration`): precise when young, coarse when old."""
    s = int(seconds)  # Go truncates toward zero
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"  # up to a second of clock skew reads as "now"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(since: datetime | None, now: datetime | None = None) -> str:
    """The AGE cell: `<unknown>` without a timestamp, as kubectl prints for a zero time."""
    if since is None:
        return "<unknown>"
    return human_duration(((now or datetime.now(UTC)) - since).total_seconds())


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity in canonical form: the largest exact binary suffix, else
    the largest exact decimal one (a `--pvc-size 5G` reads back as 5G, as kubectl shows it)."""
    for suffix, size in (*_BINARY_SUFFIXES, *_DECIMAL_SUFFIXES):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def _conditions(s: VMState, *, only: frozenset[str] | None = None) -> list[dict[str, str]]:
    # KubeVirt's condition fields are omitempty: an empty reason is absent, not "".
    return [
        {k: v for k, v in c.items() if v}
        for c in conditions(s)
        if only is None or c["type"] in only
    ]


# --- objects -------------------------------------------------------------------------------------


def _metadata(s: VMState, **extra: Any) -> dict[str, Any]:
    return {"name": s.name, "namespace": s.namespace, **extra}


def copied(doc: Any) -> Any:
    """A deep copy of a document that came from JSON (a spec as the log holds it), by msgspec:
    a fourth of copy.deepcopy's time, which a listing of 10,000 VMs feels."""
    return msgspec.json.decode(msgspec.json.encode(doc))


def vm_object(s: VMState) -> dict[str, Any]:
    """The VirtualMachine as `kubectl get vm NAME -o yaml` shows it."""
    status: dict[str, Any] = {
        "printableStatus": s.status,
        "ready": s.ready,
        "created": s.exists and s.phase != "",  # KubeVirt: "the VMI exists"
        "conditions": _conditions(s),
        "runStrategy": s.run_strategy,
    }
    if s.failures:
        status["startFailure"] = {"consecutiveFailCount": s.failures}
    if s.snapshotting:
        status["snapshotInProgress"] = s.snapshotting
    if s.restore is not None and not s.restore.complete and not s.restore.reason:
        status["restoreInProgress"] = s.restore.name
    if statuses := volume_snapshot_statuses(s.spec):
        status["volumeSnapshotStatuses"] = statuses
    if (dump := s.memory_dump) is not None:
        status["memoryDumpRequest"] = _memory_dump(dump)
    for which, rev in s.revisions.items():  # KubeVirt's status.instancetypeRef/preferenceRef
        status[f"{which}Ref"] = {"name": rev.name, "kind": rev.kind,
                                 "controllerRevisionRef": {"name": rev.revision}}  # fmt: skip
    return {
        "apiVersion": KUBEVIRT_API,
        "kind": "VirtualMachine",
        "metadata": _metadata(
            s,
            creationTimestamp=timestamp(s.created),
            labels=dict(s.labels),
            **({"annotations": dict(s.annotations)} if s.annotations else {}),
            generation=s.version,  # an integer in Kubernetes; resourceVersion is a string
            resourceVersion=str(s.version),
        ),
        "spec": copied(s.spec),  # a caller editing the object must not edit the state
        "status": status,
    }


def _memory_dump(dump: MemoryDump) -> dict[str, Any]:
    """KubeVirt's VirtualMachineMemoryDumpRequest."""
    out: dict[str, Any] = {"claimName": dump.claim, "phase": dump.phase,
                           "startTimestamp": timestamp(dump.started)}  # fmt: skip
    if dump.ended is not None:
        out["endTimestamp"] = timestamp(dump.ended)
    if dump.file_name:
        out["fileName"] = dump.file_name
    if dump.message:
        out["message"] = dump.message
    return out


def _template(s: VMState) -> dict[str, Any]:
    template = s.spec.get("template")
    return template if isinstance(template, dict) else {}


def interfaces(s: VMState) -> list[dict[str, Any]]:
    """KubeVirt's `status.interfaces[]`: the pod network's interface, with the instance's address
    from the VM network (the pod IP's part in KubeVirt, which reports it with source `domain`)."""
    if not s.ip:
        return []
    networks = _template(s).get("spec", {}).get("networks") or [{}]
    first = networks[0] if isinstance(networks[0], dict) else {}
    return [{
        "name": str(first.get("name") or "default"),
        "interfaceName": "eth0",
        "ipAddress": s.ip,
        "ipAddresses": [s.ip],
        "mac": s.mac,
        "infoSource": "domain",
    }]  # fmt: skip


def vmi_object(s: VMState) -> dict[str, Any] | None:
    """The VirtualMachineInstance of `s`, or None while there is none (no phase)."""
    if not s.phase:
        return None
    template = _template(s)
    labels = template.get("metadata", {}).get("labels", {})
    status: dict[str, Any] = {
        "phase": s.phase,
        "nodeName": s.node,
        "conditions": _conditions(s, only=_VMI_CONDITIONS),
        "interfaces": interfaces(s),
    }
    if s.phase == FAILED and s.reason:
        status["reason"] = s.reason
    if (mig := s.migration) is not None:
        state: dict[str, Any] = {
            "migrationUid": mig.id,
            "sourceNode": mig.source,
            "targetNode": mig.target,
            "completed": mig.phase == SUCCEEDED,
            "failed": mig.phase == FAILED,
        }
        if mig.reason:
            state["failureReason"] = mig.reason
        if mig.policy:
            state["migrationPolicyName"] = mig.policy
        status["migrationState"] = state
    if s.volumes:
        status["volumeStatus"] = [{"name": n, "phase": p} for n, p in s.volumes.items()]
    status.update(_size_status(s))
    created = {"creationTimestamp": timestamp(s.vmi_since)} if s.vmi_since else {}
    metadata = _metadata(s, uid=s.vmi_uid, labels=copied(labels), **created)
    return {
        "apiVersion": KUBEVIRT_API,
        "kind": "VirtualMachineInstance",
        "metadata": metadata,
        "spec": copied(template.get("spec", {})),
        "status": status,
    }


def _size_status(s: VMState) -> dict[str, Any]:
    """KubeVirt's `currentCPUTopology` and `memory` of the instance, and the hotplug under way
    as its condition (HotVCPUChange, HotMemoryChange)."""
    if (size := s.size) is None:
        return {}
    out: dict[str, Any] = {"currentCPUTopology": {
        "sockets": s.sockets_now, "cores": size.cores, "threads": size.threads}}  # fmt: skip
    if size.guest:
        # guestCurrent: what the guest has plugged (its own report), not what was asked of it
        out["memory"] = {"guestAtBoot": quantity(size.guest), "guestCurrent":
                         quantity(size.guest + s.guest_plugged), "guestRequested":
                         quantity(s.hot_guest or s.guest_now)}  # fmt: skip
    hot = [kind for kind, busy in (("HotVCPUChange", s.hot_sockets), ("HotMemoryChange",
           s.hot_guest)) if busy]  # fmt: skip
    if hot:
        out["conditions"] = [*_conditions(s, only=_VMI_CONDITIONS),
                             *({"type": kind, "status": "True"} for kind in hot)]  # fmt: skip
    return out


def node_object(n: NodeState, *, vms: int) -> dict[str, Any]:
    """A node in the shape of a Kubernetes Node, with the worker's hypervisor facts."""
    ready = n.status == READY
    condition = {
        "type": "Ready",
        "status": str(ready),
        "reason": "WorkerReady" if ready else "NodeStatusUnknown",
        "message": "worker is posting heartbeats" if ready else "worker stopped heartbeating",
    }
    spec: dict[str, Any] = {}
    if n.cordoned:
        spec["unschedulable"] = True
        spec["taints"] = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    return {
        "apiVersion": NODE_API,
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "creationTimestamp": timestamp(n.registered),
            "labels": dict(n.labels),
            "resourceVersion": str(n.version),
        },
        "spec": spec,
        "status": {
            "capacity": {"cpu": str(n.cpus), "memory": quantity(n.memory_bytes)},
            "conditions": [condition],
            "nodeInfo": {
                "hypervisor": n.hypervisor,
                "kvm": n.kvm,
                "libvirtURI": n.libvirt_uri,
                "pods": n.pods,
            },
            "draining": n.draining,
            "vms": vms,
        },
    }


def as_list(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The `kind: List` wrapper kubectl prints for several objects."""
    return {"apiVersion": "v1", "kind": "List", "items": list(items),
            "metadata": {"resourceVersion": ""}}  # fmt: skip


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def to_json(obj: Any) -> str:
    """kubectl's `-o json` layout (json.dumps's indent=4, unescaped UTF-8), by msgspec: a list of
    10,000 VMs is written in a tenth of json's time."""
    return msgspec.json.format(msgspec.json.encode(obj), indent=4).decode() + "\n"


# --- tables --------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns as kubectl's tabwriter sets them: left-aligned, padded by 3, at least 6 wide."""
    lines = [list(header), *(list(r) for r in rows)]
    widths = [
        max(_MIN_WIDTH, *(len(line[i]) + _PADDING for line in lines))
        for i in range(len(header) - 1)
    ]
    out = []
    for line in lines:
        cells = [cell.ljust(w) for cell, w in zip(line, widths, strict=False)]
        out.append("".join(cells) + line[-1])
    return "\n".join(out) + "\n"


def no_resources(namespace: str | None) -> str:
    """kubectl's message for an empty result (it goes where the table would)."""
    if namespace is None:
        return "No resources found\n"
    return f"No resources found in {namespace} namespace.\n"


def _namespaced(
    header: list[str], rows: list[tuple[VMState, list[str]]], namespace: str | None
) -> str:
    # `-A` (namespace None) puts NAMESPACE first, like kubectl.
    if not rows:
        return no_resources(namespace)
    rows.sort(key=lambda r: (r[0].namespace, r[0].name))
    if namespace is None:
        return table(["NAMESPACE", *header], ([s.namespace, *cells] for s, cells in rows))
    return table(header, (cells for _, cells in rows))


def vm_table(
    states: Iterable[VMState], *, wide: bool = False, namespace: str | None = "default",
    now: datetime | None = None,
) -> str:  # fmt: skip
    """`kubectl get vm`: NAME AGE STATUS READY (KubeVirt's wide view adds no column)."""
    now = now or datetime.now(UTC)
    rows = [(s, vm_cells(s, now)) for s in states]
    return _namespaced(VM_HEADER, rows, namespace)


VM_HEADER: Final = ["NAME", "AGE", "STATUS", "READY"]
VMI_HEADER: Final = ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
VMI_WIDE: Final = ["LIVE-MIGRATABLE", "PAUSED"]


def vm_cells(s: VMState, now: datetime) -> list[str]:
    """One row of `kubectl get vm`."""
    return [s.name, age(s.created, now), s.status, str(s.ready)]


def vmi_cells(s: VMState, now: datetime, *, wide: bool = False) -> list[str]:
    """One row of `kubectl get vmi` (a VM with an instance: it has a phase)."""
    # (a VMI's age runs from its creation, the start asked for; a log from before that was
    # recorded has only a running one's start)
    since = s.vmi_since or (s.started if s.phase == "Running" else None)
    cells = [s.name, age(since, now), s.phase, s.ip, s.node, str(s.ready)]
    return cells + (["", "True" if s.paused else ""] if wide else [])


def vmi_table(
    states: Iterable[VMState], *, wide: bool = False, namespace: str | None = "default",
    now: datetime | None = None,
) -> str:  # fmt: skip
    """`kubectl get vmi`: only VMs that have an instance; wide adds LIVE-MIGRATABLE and PAUSED.

    AGE counts from the domain's start (`<unknown>` before it started); LIVE-MIGRATABLE is blank:
    the fold does not hold migratability, and KubeVirt too leaves a missing condition blank.
    """
    now = now or datetime.now(UTC)
    header = VMI_HEADER + (VMI_WIDE if wide else [])
    rows = [(s, vmi_cells(s, now, wide=wide)) for s in states if s.phase]
    return _namespaced(header, rows, namespace)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def node_status(n: NodeState) -> str:
    """kubectl's node STATUS: the Ready condition, plus SchedulingDisabled when cordoned."""
    return f"{n.status},SchedulingDisabled" if n.cordoned else n.status


def node_table(
    nodes: Iterable[NodeState], vm_counts: Mapping[str, int], *, wide: bool = False,
    now: datetime | None = None,
) -> str:  # fmt: skip
    """`virtbus get nodes`: NAME STATUS AGE VMS CPU MEMORY; wide adds HYPERVISOR KVM LABELS."""
    now = now or datetime.now(UTC)
    header = NODE_HEADER + (NODE_WIDE if wide else [])
    rows = [node_cells(n, vm_counts.get(n.name, 0), now, wide=wide)
            for n in sorted(nodes, key=lambda n: n.name)]  # fmt: skip
    return table(header, rows) if rows else no_resources(None)


NODE_HEADER: Final = ["NAME", "STATUS", "AGE", "VMS", "CPU", "MEMORY"]
NODE_WIDE: Final = ["HYPERVISOR", "KVM", "LABELS"]


def node_cells(n: NodeState, vms: int, now: datetime, *, wide: bool = False) -> list[str]:
    """One row of `virtbus get nodes`."""
    cells = [n.name, node_status(n), age(n.registered, now), str(vms), str(n.cpus),
             quantity(n.memory_bytes)]  # fmt: skip
    return cells + ([n.hypervisor, str(n.kvm).lower(), _labels(n.labels)] if wide else [])
