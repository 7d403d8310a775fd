"""The orchestrator's Prometheus metrics (`virtbus_` prefix, KubeVirt's names where it has one).

Counters are bumped where things happen; the VM and node gauges are read off the controllers'
folded state at scrape time, so they are never stale and cost nothing between scrapes. A
controller is watched as a `FoldedView` (its VM and node maps), so this module needs nothing of it.
"""

from __future__ import annotations

import weakref
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from events.nodes import NodeState
from events.state import VMState

COMMANDS = Counter(
    "virtbus_commands", "Commands judged by the intake, by kind and outcome", ["command", "outcome"]
)
WORK_ENQUEUED = Counter(
    "virtbus_work_items_enqueued", "Work items the controller put on a node's queue", ["action"]
)
REACTION_CONFLICTS = Counter(
    "virtbus_controller_conflicts",
    "Decisions dropped because another controller (or a node) appended first",
)
UNFOLDABLE = Counter(
    "virtbus_controller_unfoldable_events", "Events the controller skipped: they cannot be folded"
)
UNJUDGEABLE = Counter(
    "virtbus_intake_unjudgeable_commands",
    "Commands whose judging met a fault: rejected as such and terminated",
)


class FoldedView(Protocol):
    """What the gauges read: a controller's folded VMs and nodes."""

    @property
    def vms(self) -> Mapping[str, VMState]: ...

    @property
    def nodes(self) -> Mapping[str, NodeState]: ...


_controllers: weakref.WeakSet[FoldedView] = weakref.WeakSet()


def watch(controller: FoldedView) -> None:
    """Report this controller's view in the gauges while it lives."""
    _controllers.add(controller)


class _StateCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        phases = GaugeMetricFamily(
            "virtbus_vmi_phase_count", "VMIs per phase and node (kubevirt_vmi_phase_count)",
            labels=["phase", "node"],
        )  # fmt: skip
        statuses = GaugeMetricFamily(
            "virtbus_vm_status_count", "VMs per printable status", labels=["status"]
        )
        nodes = GaugeMetricFamily("virtbus_nodes", "Nodes per status", labels=["status"])
        vmis: Tally[tuple[str, str]] = Tally()
        vms: Tally[str] = Tally()
        node_states: Tally[str] = Tally()
        for controller in list(_controllers):
            for s in list(controller.vms.values()):
                if s.exists:
                    vms[s.status] += 1
                    if s.phase:
                        vmis[(s.phase, s.node)] += 1
            for n in list(controller.nodes.values()):
                node_states[n.status] += 1
        for (phase, node), count in sorted(vmis.items()):
            phases.add_metric([phase, node], count)
        for status, count in sorted(vms.items()):
            statuses.add_metric([status], count)
        for status, count in sorted(node_states.items()):
            nodes.add_metric([status], count)
        yield from (phases, statuses, nodes)


REGISTRY.register(_StateCollector())
