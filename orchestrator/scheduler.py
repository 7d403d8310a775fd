"""Placement: which node gets a VM, or why none can (the message kube-scheduler would give).

Pure. Memory is reserved strictly; vCPUs are overcommitted 10:1 like KubeVirt's default
`cpuAllocationRatio`; `nodeSelector` must match the node's labels; among the nodes that fit, the one
with the most free memory (then the fewest VMs, then the name) wins.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from events.errors import ValidationError

CPU_ALLOCATION_RATIO = 10


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    cpus: int
    memory_bytes: int
    labels: dict[str, str] = {}
    schedulable: bool = True
    used_cpus: int = 0
    used_memory: int = 0
    vms: int = 0
    no_kvm: bool = False  # a QEMU node without /dev/kvm while the KubeVirt object forbids emulation


class Request(msgspec.Struct, frozen=True, kw_only=True):
    cpus: int = 1
    memory_bytes: int = 0
    node_selector: dict[str, str] = {}
    nodes: frozenset[str] | None = None  # only these: the nodes holding the VM's volumes
    node_name: str = ""  # only this node (a stopped VM's home after a cold migration)


class Unschedulable(ValidationError):
    """No node fits; the message lists why, per node count, like kube-scheduler."""


def place(req: Request, nodes: Iterable[NodeView]) -> str:
    """The chosen node's name, or raise Unschedulable with the reasons."""
    why: dict[str, int] = {}
    fits: list[NodeView] = []
    total = 0
    for n in nodes:
        total += 1
        reason = _misfit(req, n)
        if reason:
            why[reason] = why.get(reason, 0) + 1
        else:
            fits.append(n)
    if not fits:
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(why.items()))
        raise Unschedulable(
            f"0/{total} nodes are available" + (f": {detail}." if detail else "."),
            field="spec.template.spec",
        )
    best = min(fits, key=lambda n: (-(n.memory_bytes - n.used_memory), n.vms, n.name))
    return best.name


def _misfit(req: Request, n: NodeView) -> str:
    if req.node_name and n.name != req.node_name:
        return "node(s) didn't match the requested node name"
    if not n.schedulable:
        return "node(s) were unschedulable"
    if req.nodes is not None and (len(req.nodes) != 1 or n.name not in req.nodes):
        return "node(s) had volume node affinity conflict"
    if any(n.labels.get(k) != v for k, v in req.node_selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    if n.no_kvm:
        return "Insufficient devices.kubevirt.io/kvm"
    if n.memory_bytes - n.used_memory < req.memory_bytes:
        return "Insufficient memory"
    if n.cpus * CPU_ALLOCATION_RATIO - n.used_cpus < req.cpus:
        return "Insufficient cpu"
    return ""
