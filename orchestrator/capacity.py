"""What each node has left and which migrations hold a slot: the controller's bookkeeping for
placement, kept apart from its folding and reacting.

Usage is kept current as VMs start and stop (summing at each placement made scheduling N VMs cost
N squared). A decision holds its capacity (or migration slot) from the moment it is made, before
its append awaits: reactions run side by side, and the next placement must see it taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events import model as m
from events import work as w
from events.manifest import summarize
from events.nodes import NodeState
from events.state import PENDING, RUNNING, SCHEDULED, SCHEDULING, VMState
from orchestrator.migrations import ACTIVE_PHASES
from orchestrator.scheduler import NodeView

_HOLDS_CAPACITY = (SCHEDULING, SCHEDULED, RUNNING)
Hold = tuple[str, int, int]  # (node, cpus, memory)
Slot = tuple[str, str, int, int]  # (source, target, cpus, memory) of a migration


def need(s: VMState) -> tuple[int, int]:
    """(cpus, memory bytes) the VM's spec asks for."""
    try:
        got: dict[str, Any] = summarize(s.spec)
    except Exception:  # a spec the log holds but no apply would have let through
        return 1, 0
    return got["cpus"], got["memory_bytes"]


class Capacity:
    def __init__(self, policy: w.MigrationPolicy) -> None:
        self.policy = policy
        self._reserved: dict[str, Hold] = {}  # VM -> what it was scheduled on, not yet folded
        self._held: dict[str, Hold] = {}  # VM -> what it holds, as folded
        self._usage: dict[str, list[int]] = {}  # node -> [cpus, memory, vms] held there
        # VM -> (source, target, cpus, memory) of each migration holding a slot (and the
        # target's capacity), folded or decided and not yet folded back.
        self._migrating: dict[str, Slot] = {}

    # --- as the log has it -----------------------------------------------------------------------

    def folded(self, key: str, s: VMState, e: m.Event) -> None:
        """Account the VM's state after event `e` was folded."""
        if isinstance(e, m.VMScheduled | m.VMUnschedulable):
            self._reserved.pop(key, None)
        self._account(key, s)
        self._account_migration(key, s)

    def _account(self, key: str, s: VMState) -> None:
        held = self._held.get(key)
        holds = bool(s.node) and s.phase in _HOLDS_CAPACITY
        if held is not None and (not holds or held[0] != s.node):
            u = self._usage.setdefault(held[0], [0, 0, 0])
            u[0], u[1], u[2] = u[0] - held[1], u[1] - held[2], u[2] - 1
            del self._held[key]
            held = None
        if holds and held is None:
            cpus, mem = need(s)
            self._held[key] = (s.node, cpus, mem)
            u = self._usage.setdefault(s.node, [0, 0, 0])
            u[0], u[1], u[2] = u[0] + cpus, u[1] + mem, u[2] + 1

    def _account_migration(self, key: str, s: VMState) -> None:
        mig = s.migration
        if mig is not None and mig.phase in ACTIVE_PHASES:
            if key not in self._migrating:
                self._migrating[key] = (mig.source, mig.target, *need(s))
        elif mig is None or mig.phase != PENDING:
            self._migrating.pop(key, None)

    # --- decided, not yet folded -----------------------------------------------------------------

    def hold(self, key: str, s: VMState, events: list[m.Event]) -> Slot | None:
        """Hold what the decided `events` take; returns what `release` needs to undo it."""
        before = self._migrating.get(key)
        for e in events:
            if isinstance(e, m.VMScheduled):
                self._reserved[key] = (e.node, *need(s))
            elif isinstance(e, m.MigrationScheduled):
                self._migrating[key] = (e.source, e.target, *need(s))
        return before

    def release(self, key: str, before: Slot | None) -> None:
        """The decision lost (another controller appended first): give back what it held."""
        self._reserved.pop(key, None)
        if before is None:
            self._migrating.pop(key, None)
        else:
            self._migrating[key] = before

    # --- read by placement and migrations --------------------------------------------------------

    def slot_free(self, source: str) -> bool:
        """KubeVirt's limits: parallel migrations per cluster, and outbound per source node."""
        p = self.policy
        if len(self._migrating) >= p.parallel_per_cluster:
            return False
        outbound = sum(1 for src, *_ in self._migrating.values() if src == source)
        return outbound < p.parallel_outbound_per_node

    def node_views(
        self, nodes: Mapping[str, NodeState], *, kvm_only: bool = False
    ) -> list[NodeView]:
        """What placement sees; `kvm_only` (useEmulation off) leaves QEMU nodes without
        /dev/kvm with no `devices.kubevirt.io/kvm` to give, as KubeVirt's device plugin does."""
        used = {n: list(self._usage.get(n, (0, 0, 0))) for n in nodes}
        # A migration's target holds the VM's capacity until the move is over.
        reserved = [*self._reserved.values(), *((t, c, mem) for _, t, c, mem in
                                                self._migrating.values())]  # fmt: skip
        for node, cpus, mem in reserved:
            if node in used:
                u = used[node]
                u[0], u[1], u[2] = u[0] + cpus, u[1] + mem, u[2] + 1
        return [
            NodeView(
                name=n.name, cpus=n.cpus, memory_bytes=n.memory_bytes, labels=n.labels,
                schedulable=n.schedulable, used_cpus=used[name][0], used_memory=used[name][1],
                vms=used[name][2], no_kvm=kvm_only and n.hypervisor == "qemu" and not n.kvm,
            )
            for name, n in nodes.items()
        ]  # fmt: skip
