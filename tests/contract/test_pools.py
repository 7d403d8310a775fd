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
from orchestrator.pool_update import REVISION_LABEL, revision_name
from orchestrator.reconcile import reconcile_rs

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# web-2 was made first, then web-0, web-1, web-3 (a scale-in and out in between).
MADE = {"web-0": 1, "web-1": 2, "web-2": 0, "web-3": 3}


def template(guest: str = "64Mi", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"runStrategy": "Halted", "template": {
        "metadata": {"labels": labels or {}},
        "spec": {"domain": {"devices": {}, "memory": {"guest": guest}}}}}  # fmt: skip


def pool(replicas: int, strategy: dict[str, Any] | None = None, *,
         vm: dict[str, Any] | None = None, **more: Any) -> ReplicaSetState:  # fmt: skip
    spec = {"replicas": replicas, "virtualMachineTemplate": {"spec": vm or template()}, **more}
    spec |= {"scaleInStrategy": strategy} if strategy is not None else {}
    return ReplicaSetState(namespace="default", name="web", aggregate="vmpool", exists=True,
                           replicas=replicas, spec=spec)  # fmt: skip


def vms(**state: Any) -> dict[str, VMState]:
    """The pool's VMs, made from its current template (so no update is due)."""
    labels = {"kubevirt.io/vmpool": "web", REVISION_LABEL: revision_name(pool(0))}
    return {name: VMState(namespace="default", name=name, exists=True, version=1,
                          labels=labels, spec=template(), created=T0 + timedelta(minutes=at),
                          **state)
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


def test_a_proactive_scale_in_deletes_only_what_its_selectors_pick() -> None:
    have = vms()
    have["web-1"] = VMState(**{**{f: getattr(have["web-1"], f) for f in VMState.__struct_fields__},
                               "spec": template(labels={"tier": "b"})})  # fmt: skip
    exists = {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    rs = pool(2, {"proactive": {"selectionPolicy": {"selectors": {"labelSelector": exists}}}})
    gone = [ref.name for ref, events, _ in reconcile_rs(rs, have)
            if any(isinstance(e, m.VMDeleteRequested) for e in events)]  # fmt: skip
    assert gone == ["web-1"]


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


def asked(rs: ReplicaSetState, have: dict[str, VMState]) -> list[tuple[str, str]]:
    return [(ref.name, type(e).__name__) for ref, events, _ in reconcile_rs(rs, have)
            for e in events]  # fmt: skip


def test_a_changed_template_updates_the_pools_vms_by_its_update_strategy() -> None:
    """KubeVirt's updateStrategy: outdated VMs get the new template unless `unmanaged`; under
    `proactive` (the default) running VMs out of date restart, `maxUnavailable` at a time, in
    the sort policy's order; `selectors` limit which VMs are touched."""
    bigger = template("128Mi")
    proactive = {"proactive": {"selectionPolicy": {"sortPolicy": "AscendingOrder"}}}
    changed = asked(pool(4, vm=bigger), vms())
    assert changed == [(f"web-{i}", "VMSpecChanged") for i in (0, 1, 2, 3)]
    assert asked(pool(4, vm=bigger, updateStrategy={"unmanaged": {}}), vms()) == []
    [(ref, [event], _)] = reconcile_rs(pool(4, vm=bigger, updateStrategy={"proactive": {
        "selectionPolicy": {"selectors": {"labelSelector": {"matchLabels": {"tier": "a"}}}}}}),
        {**vms(), "web-1": VMState(**{**{f: getattr(vms()["web-1"], f) for f in
                                         VMState.__struct_fields__},
                                      "spec": template(labels={"tier": "a"})})})  # fmt: skip
    assert (ref.name, event.spec) == ("web-1", bigger)  # type: ignore[attr-defined]
    # Updated but running the old template (RestartRequired): proactive restarts them.
    running = vms(phase="Running", ready=True, restart_required=True)
    up = pool(4, proactive, updateStrategy=proactive, maxUnavailable=2)
    assert asked(up, running) == [("web-0", "VMRestartRequested"),
                                  ("web-1", "VMRestartRequested")]  # fmt: skip
    assert asked(pool(4, updateStrategy={"opportunistic": {}}), running) == []
    one_down = {
        **running,
        "web-3": VMState(
            **{
                **{f: getattr(running["web-3"], f) for f in VMState.__struct_fields__},
                "ready": False,
            }
        ),
    }
    assert asked(up, one_down) == [("web-0", "VMRestartRequested")]
