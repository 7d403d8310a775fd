"""Which judgement a command meets: its target aggregate's history folded by that kind's fold,
then that kind's `decide` (a VM's, a replica set's, a node's...). Pure, like each `decide`; the
intake calls it once per command.
"""

from __future__ import annotations

from events import commands as c
from events import model as m
from events.datasources import DataSourceState, apply_datasource, decide_datasource
from events.envelope import Recorded
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


def decide_for(
    ref: Ref, history: list[Recorded], cmd: c.Command, *, nodes: list[NodeView] | None = None,
    node_ports: PortPicker | None = None,
) -> list[m.Event]:  # fmt: skip
    """`node_ports`: the nodePort pool a Service's judgement takes from (orchestrator/nodeports)."""
    if ref.kind == "vm":
        return decide(fold(r.envelope for r in history), cmd, nodes=nodes)
    if ref.kind in ("rs", "vmpool"):
        rs = ReplicaSetState()
        for r in history:
            rs = apply_rs(rs, r.envelope)
        return decide_rs(rs, cmd)
    if ref.kind == "node":
        node = NodeState()
        for r in history:
            node = apply_node(node, r.envelope)
        return decide_node(node, cmd)
    if ref.kind == "webhook":
        return decide_webhook(fold_webhook(ref.name, history), cmd)
    if ref.kind == "kubevirt":
        return decide_kubevirt(fold_kubevirt(r.envelope for r in history), cmd)
    if ref.kind == "service":
        svc = ServiceState()
        for r in history:
            svc = apply_service(svc, r.envelope)
        return decide_service(svc, cmd, ports=node_ports)
    if ref.kind == "migrationpolicy":
        policy = PolicyState()
        for r in history:
            policy = apply_policy(policy, r.envelope)
        return decide_policy(policy, cmd)
    if ref.kind == "datasource":
        ds = DataSourceState()
        for r in history:
            ds = apply_datasource(ds, r.envelope)
        return decide_datasource(ds, cmd)
    if ref.kind in KIND_OF:
        it = InstancetypeState()
        for r in history:
            it = apply_instancetype(it, r.envelope)
        applied, deleted = _INSTANCETYPE_EVENTS[ref.kind]
        return decide_instancetype(it, cmd, applied=applied, deleted=deleted)
    raise ValidationError(f"{type(cmd).__name__} is not available yet in virtbus", field="kind")


_INSTANCETYPE_EVENTS: dict[str, tuple[type[m.Event], type[m.Event]]] = {
    "instancetype": (m.InstancetypeApplied, m.InstancetypeDeleted),
    "clusterinstancetype": (m.ClusterInstancetypeApplied, m.ClusterInstancetypeDeleted),
    "preference": (m.PreferenceApplied, m.PreferenceDeleted),
    "clusterpreference": (m.ClusterPreferenceApplied, m.ClusterPreferenceDeleted),
}
