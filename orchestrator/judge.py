"""Which judgement a command meets: its target aggregate's history folded by that kind's fold,
then that kind's `decide` (a VM's, a replica set's, a node's...). Pure, like each `decide`; the
intake calls it once per command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from events import commands as c
from events import model as m
from events.datasources import DataSourceState, apply_datasource, decide_datasource
from events.envelope import Envelope, Recorded
from events.errors import ValidationError
from events.instancetypes import (
    KIND_OF,
    InstancetypeState,
    apply_instancetype,
    decide_instancetype,
)
from events.migration_policies import PolicyState, apply_policy, decide_policy
from events.names import Ref
from events.nodes import NodeState, apply_node
from events.replicasets import ReplicaSetState, apply_rs
from events.services import PortPicker, ServiceState, apply_service, decide_service
from events.state import fold
from events.webhooks import fold_webhook
from orchestrator.decide import decide, decide_rs
from orchestrator.kubevirt import decide_kubevirt, fold_kubevirt
from orchestrator.migrations import decide_node
from orchestrator.scheduler import NodeView
from orchestrator.webhooks.subscriptions import decide_webhook

S = TypeVar("S")


def decide_for(
    ref: Ref, history: list[Recorded], cmd: c.Command, *, nodes: list[NodeView] | None = None,
    node_ports: PortPicker | None = None,
) -> list[m.Event]:  # fmt: skip
    """`node_ports`: the nodePort pool a Service's judgement takes from (orchestrator/nodeports)."""
    if ref.kind == "vm":
        return decide(fold(r.envelope for r in history), cmd, nodes=nodes)
    if ref.kind in ("rs", "vmpool"):
        return decide_rs(_folded(ReplicaSetState(), apply_rs, history), cmd)
    if ref.kind == "node":
        return decide_node(_folded(NodeState(), apply_node, history), cmd)
    if ref.kind == "webhook":
        return decide_webhook(fold_webhook(ref.name, history), cmd)
    if ref.kind == "kubevirt":
        return decide_kubevirt(fold_kubevirt(r.envelope for r in history), cmd)
    if ref.kind == "service":
        svc = _folded(ServiceState(), apply_service, history)
        return decide_service(svc, cmd, ports=node_ports)
    if ref.kind == "migrationpolicy":
        return decide_policy(_folded(PolicyState(), apply_policy, history), cmd)
    if ref.kind == "datasource":
        return decide_datasource(_folded(DataSourceState(), apply_datasource, history), cmd)
    if ref.kind in KIND_OF:
        applied, deleted = _INSTANCETYPE_EVENTS[ref.kind]
        it = _folded(InstancetypeState(), apply_instancetype, history)
        return decide_instancetype(it, cmd, applied=applied, deleted=deleted)
    raise ValidationError(f"{type(cmd).__name__} is not available yet in virtbus", field="kind")


def _folded(state: S, step: Callable[[S, Envelope], S], history: list[Recorded]) -> S:
    for r in history:
        state = step(state, r.envelope)
    return state


_INSTANCETYPE_EVENTS: dict[str, tuple[type[m.Event], type[m.Event]]] = {
    "instancetype": (m.InstancetypeApplied, m.InstancetypeDeleted),
    "clusterinstancetype": (m.ClusterInstancetypeApplied, m.ClusterInstancetypeDeleted),
    "preference": (m.PreferenceApplied, m.PreferenceDeleted),
    "clusterpreference": (m.ClusterPreferenceApplied, m.ClusterPreferenceDeleted),
}
