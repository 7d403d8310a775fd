"""A VirtualMachinePool's scale-in, KubeVirt's `scaleInStrategy` (pure, no I/O): which VMs go,
new ones at the lowest free index, none deleted when scaling in is left to the user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events import model as m
from events.errors import ValidationError
from events.manifest import to_commands
from events.replicasets import ReplicaSetState
from events.state import VMState
from orchestrator.reconcile import reconcile_rs

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# web-2 was made first, then web-0, web-1, web-3 (a scale-in and out in between).
MADE = {"web-0": 1, "web-1": 2, "web-2": 0, "web-3": 3}


def pool(replicas: int, strategy: dict[str, Any] | None = None) -> ReplicaSetState:
    vm = {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "memory": {
        "guest": "64Mi"}}}}}  # fmt: skip
    spec = {"replicas": replicas, "virtualMachineTemplate": {"spec": vm}}
    spec |= {"scaleInStrategy": strategy} if strategy is not None else {}
    return ReplicaSetState(namespace="default", name="web", aggregate="vmpool", exists=True,
                           replicas=replicas, spec=spec)  # fmt: skip


def vms() -> dict[str, VMState]:
    return {name: VMState(namespace="default", name=name, exists=True, version=1,
                          labels={"kubevirt.io/vmpool": "web"},
                          created=T0 + timedelta(minutes=at))
            for name, at in MADE.items()}  # fmt: skip


def deleted(rs: ReplicaSetState) -> list[str]:
    return sorted(ref.name for ref, events, _ in reconcile_rs(rs, vms())
                  if any(isinstance(e, m.VMDeleteRequested) for e in events))  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "gone"),
    [(None, ["web-2", "web-3"]), ("DescendingOrder", ["web-2", "web-3"]),
     ("AscendingOrder", ["web-0", "web-1"]), ("Newest", ["web-1", "web-3"]),
     ("Oldest", ["web-0", "web-2"])],
)  # fmt: skip
def test_scale_in_deletes_what_the_sort_policy_picks(policy: str | None, gone: list[str]) -> None:
    strategy = {"proactive": {"selectionPolicy": {"sortPolicy": policy}}} if policy else None
    assert deleted(pool(2, strategy)) == gone


def test_unmanaged_scale_in_deletes_nothing_until_the_pool_goes() -> None:
    assert deleted(pool(1, {"unmanaged": {}})) == []
    gone = pool(1, {"unmanaged": {}})
    assert deleted(ReplicaSetState(**{**{f: getattr(gone, f) for f in gone.__struct_fields__},
                                      "exists": False})) == sorted(MADE)  # fmt: skip


def test_scale_out_takes_the_lowest_free_indexes() -> None:
    have = vms()
    del have["web-1"]
    made = [ref.name for ref, _, _ in reconcile_rs(pool(5), have)]
    assert made == ["web-1", "web-4"]


def test_a_scale_in_strategy_is_checked() -> None:
    doc = {
        "apiVersion": "pool.kubevirt.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": "web"},
        "spec": {
            "virtualMachineTemplate": {
                "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}
            },
            "scaleInStrategy": {"proactive": {"selectionPolicy": {"sortPolicy": "Largest"}}},
        },
    }
    with pytest.raises(ValidationError) as err:
        to_commands(doc)
    assert err.value.field == "spec.scaleInStrategy.proactive.selectionPolicy.sortPolicy"
