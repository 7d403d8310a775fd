"""A VirtualMachinePool's `updateStrategy` (KubeVirt's pool controller, pure): what a changed
`virtualMachineTemplate` does to the VMs the pool already has.

KubeVirt marks each pool VM with the pool revision it was made from (the label
`kubevirt.io/vm-pool-revision-name`); a VM of an older revision is outdated. Unless the strategy
is `unmanaged`, outdated VMs get the new template (an apply by the controller: a running VM
then takes what it can live and is RestartRequired for the rest); under `proactive` (KubeVirt's
default) a running VM whose instance is out of date is restarted too, at most `maxUnavailable`
at a time, in the order of its `sortPolicy`, and one whose `dataVolumeTemplates` changed is
deleted to be made again with new DataVolumes (KubeVirt's update by VM deletion, once the pool
has all its VMs); `opportunistic` leaves that to the next restart.
`selectors` (a label selector on the VM template's labels, node selector requirements on its
nodeSelector) limit which VMs an update touches, and a proactive scale-in which it deletes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from events import commands as c
from events import model as m
from events.manifest import pool_vm_spec
from events.names import Ref
from events.replicasets import ReplicaSetState
from events.state import VMState
from orchestrator.decide import decide
from orchestrator.pool_state import deletion

REVISION_LABEL: Final = "kubevirt.io/vm-pool-revision-name"  # KubeVirt's


def revision_name(rs: ReplicaSetState) -> str:
    """The pool's current revision: its name and its template's digest (KubeVirt names it by
    the pool's generation, which also moves on a scale; the digest moves only with the
    template, so a scale outdates nothing)."""
    template = json.dumps(rs.spec.get("virtualMachineTemplate") or {}, sort_keys=True)
    return f"{rs.name}-{hashlib.sha256(template.encode()).hexdigest()[:10]}"


def _requirement(values: Mapping[str, str], req: Mapping[str, Any]) -> bool:
    key, op, wanted = req.get("key", ""), req.get("operator", ""), req.get("values") or []
    have = values.get(key)
    if op == "In":
        return have in wanted
    if op == "NotIn":
        return have not in wanted
    if op == "Exists":
        return have is not None
    if op == "DoesNotExist":
        return have is None
    if op in ("Gt", "Lt") and have is not None and have.lstrip("-").isdigit() and wanted:
        return int(have) > int(wanted[0]) if op == "Gt" else int(have) < int(wanted[0])
    return False


def selected(selectors: Mapping[str, Any] | None, vm_spec: Mapping[str, Any]) -> bool:
    """Whether a pool VM (its spec) passes the strategy's `selectors`: all of them, as
    KubeVirt's filterVMsBasedOnSelectors."""
    if not selectors:
        return True
    template = vm_spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    node_selector = (template.get("spec") or {}).get("nodeSelector") or {}
    by_label = selectors.get("labelSelector") or {}
    if any(labels.get(k) != v for k, v in (by_label.get("matchLabels") or {}).items()):
        return False
    if not all(_requirement(labels, r) for r in by_label.get("matchExpressions") or []):
        return False
    by_node = selectors.get("nodeSelectorRequirementMatcher") or []
    return all(_requirement(node_selector, r) for r in by_node)


def strategy(rs: ReplicaSetState) -> tuple[str, dict[str, Any]]:
    """The update strategy's kind (`proactive` when none is given, as KubeVirt's) and body."""
    given = rs.spec.get("updateStrategy") or {}
    for kind in ("unmanaged", "opportunistic", "proactive"):
        if kind in given:
            return kind, given[kind] or {}
    return "proactive", {}


def max_unavailable(rs: ReplicaSetState) -> int:
    """KubeVirt's `maxUnavailable` (a count or a percentage of the replicas, 100% by default),
    at least 1."""
    given = rs.spec.get("maxUnavailable", "100%")
    if isinstance(given, str) and given.endswith("%") and given[:-1].isdigit():
        return max(1, rs.replicas * int(given[:-1]) // 100)
    return max(1, int(given)) if isinstance(given, int) else 1


def sort_names(policy: str | None, vms: Mapping[str, VMState]) -> list[str]:
    """Pool VM names in the order of a `sortPolicy` (KubeVirt's; Random is the highest index
    first, so a replay picks alike)."""

    def index(name: str) -> int:
        tail = name.rpartition("-")[2]
        return int(tail) if tail.isdigit() else 0

    names = sorted(vms, key=index, reverse=policy != "AscendingOrder")
    if policy in ("Newest", "Oldest"):
        epoch = datetime.min.replace(tzinfo=UTC)
        names.sort(key=lambda n: vms[n].created or epoch, reverse=policy == "Newest")
    return names


def updates(
    rs: ReplicaSetState, active: Mapping[str, VMState], *, spec: dict[str, Any],
    labels: dict[str, str], stable: bool = True,
) -> list[tuple[Ref, list[m.Event], int]]:  # fmt: skip
    """Per pool VM, the events its update strategy asks now: the new template for an outdated
    VM; under `proactive`, a restart for a running one whose instance is out of date, and the
    deletion (to be made again) of a running one whose `dataVolumeTemplates` changed, once the
    pool is `stable` (no VM going or to be made: KubeVirt updates after scaling)."""
    kind, body = strategy(rs)
    if kind == "unmanaged":
        return []
    policy = body.get("selectionPolicy") or {}
    picked = {n: s for n, s in active.items() if selected(policy.get("selectors"), s.spec)}
    out: list[tuple[Ref, list[m.Event], int]] = []
    remake: dict[str, VMState] = {}
    for name, s in picked.items():
        if s.labels.get(REVISION_LABEL) != labels[REVISION_LABEL]:
            mine = pool_vm_spec(spec, int(name.rpartition("-")[2]))
            if kind == "proactive" and s.running and _disks_changed(s.spec, mine):
                remake[name] = s  # KubeVirt's vm-delete update: new DataVolumes need a new VM
                continue
            apply = c.ApplyVM(name=name, namespace=rs.namespace, labels=labels, spec=mine)
            out.append((Ref("vm", rs.namespace, name), decide(s, apply), s.version))
    if kind != "proactive":
        return out
    busy = sum(1 for s in active.values() if s.restarting or (s.running and not s.ready))
    budget = max_unavailable(rs) - busy
    updated = {n: s for n, s in picked.items() if s.labels.get(REVISION_LABEL) ==
               labels[REVISION_LABEL]}  # fmt: skip
    for name in sort_names(policy.get("sortPolicy"), {**updated, **remake}):
        s = active[name]
        if budget <= 0:
            break
        if name in remake and stable:
            why = "dataVolumeTemplates changed (updateStrategy proactive): remade with new ones"
            out.append((Ref("vm", rs.namespace, name), deletion(s, f"pool {rs.name}: {why}"),
                        s.version))  # fmt: skip
            note = m.VMPoolVMReplaced(vm=name, reason="dataVolumeTemplates changed")
            out.append((Ref("vmpool", rs.namespace, rs.name), [note], rs.version))
            budget -= 1
        elif name not in remake and s.running and s.restart_required and not s.restarting:
            restart = c.RestartVM(name=name, namespace=rs.namespace)
            out.append((Ref("vm", rs.namespace, name), decide(s, restart), s.version))
            budget -= 1
    return out


def _disks_changed(had: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return (had.get("dataVolumeTemplates") or []) != (wanted.get("dataVolumeTemplates") or [])
