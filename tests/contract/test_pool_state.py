"""A pool VM's DataVolumes across its deletion (pure, no I/O): KubeVirt's `statePreservation`
keeps them through a scale-in for the VM made again at that index, and a changed
`dataVolumeTemplates` deletes a running VM to make it again with new ones."""

from __future__ import annotations

from typing import Any

import pytest

from events import model as m
from events.errors import ValidationError
from events.manifest import to_commands
from events.replicasets import ReplicaSetState
from events.state import VMState
from events.volumes import VolumeState
from orchestrator.pool_state import leftovers
from orchestrator.pool_update import REVISION_LABEL, revision_name
from orchestrator.reconcile import reconcile_rs


def dv(size: str = "1Mi") -> dict[str, Any]:
    return {"metadata": {"name": "data"}, "spec": {"source": {"blank": {}}, "storage": {
        "resources": {"requests": {"storage": size}}}}}  # fmt: skip


def template(size: str = "1Mi", index: int | None = None) -> dict[str, Any]:
    """The pool's VM template, or (`index`) its VM number `index`'s spec."""
    name = "data" if index is None else f"data-{index}"
    one = dv(size)
    one["metadata"]["name"] = name
    return {"runStrategy": "Always", "dataVolumeTemplates": [one], "template": {"spec": {
        "domain": {"devices": {}, "memory": {"guest": "64Mi"}},
        "volumes": [{"name": "data", "dataVolume": {"name": name}}]}}}  # fmt: skip


def pool(replicas: int, *, preservation: str | None = "Offline", size: str = "1Mi",
         **more: Any) -> ReplicaSetState:  # fmt: skip
    proactive: dict[str, Any] = {"selectionPolicy": {"sortPolicy": "DescendingOrder"}}
    if preservation:
        proactive["statePreservation"] = preservation
    spec = {"replicas": replicas, "scaleInStrategy": {"proactive": proactive},
            "virtualMachineTemplate": {"spec": template(size)}, **more}  # fmt: skip
    return ReplicaSetState(namespace="default", name="db", aggregate="vmpool", exists=True,
                           replicas=replicas, spec=spec, version=7)  # fmt: skip


def vm(index: int, *, size: str = "1Mi", **state: Any) -> VMState:
    labels = {"kubevirt.io/vmpool": "db", REVISION_LABEL: revision_name(pool(0, size=size))}
    return VMState(namespace="default", name=f"db-{index}", exists=True, version=3,
                   labels=labels, spec=template(size, index), **state)  # fmt: skip


def volume(index: int, owner: str | None = None, **state: Any) -> tuple[str, VolumeState]:
    owner = f"db-{index}" if owner is None else owner
    v = VolumeState(namespace="default", name=f"data-{index}", exists=True, data_volume=True,
                    owner=owner, version=4, **state)  # fmt: skip
    return f"virt.volume.default.data-{index}", v


def ops(rs: ReplicaSetState, vms: dict[str, VMState],
        volumes: dict[str, VolumeState]) -> list[tuple[str, Any]]:  # fmt: skip
    return [(f"{ref.kind}/{ref.name}@{version}", e) for ref, events, version in
            reconcile_rs(rs, vms, volumes) for e in events]  # fmt: skip


def test_an_offline_scale_in_releases_the_disks_then_deletes_the_vm() -> None:
    """KubeVirt takes the VM's owner reference off its DataVolumes and deletes the VM: here the
    release comes first, and the deletion only once it is folded, so they never go with it."""
    running = {f"db-{i}": vm(i) for i in (0, 1)}
    owned = dict(volume(i) for i in (0, 1))
    why = "kept when pool db scaled in db-1 (statePreservation Offline)"
    assert ops(pool(1), running, owned) == [
        ("volume/data-1@4", m.VolumeReleased(owner="db-1", reason=why))]  # fmt: skip
    released = {**owned, **dict([volume(1, owner="")])}
    reason = "pool db scaled in to 1; its DataVolumes data-1 are kept (statePreservation Offline)"
    assert ops(pool(1), running, released) == [
        ("vm/db-1@3", m.VMDeleteRequested(reason=reason)),
        ("vm/db-1@3", m.VMDeleted(disks=["dataVolume/data-1"])),
        ("vmpool/db@7", m.VMPoolStatePreserved(vm="db-1", volumes=["data-1"])),
    ]  # fmt: skip


@pytest.mark.parametrize("preservation", [None, "Disabled"])
def test_without_state_preservation_a_scale_in_deletes_at_once(preservation: str | None) -> None:
    running = {f"db-{i}": vm(i) for i in (0, 1)}
    assert ops(pool(1, preservation=preservation), running, dict(volume(i) for i in (0, 1))) == [
        ("vm/db-1@3", m.VMDeleteRequested(reason="pool db scaled in to 1")),
        ("vm/db-1@3", m.VMDeleted(disks=["dataVolume/data-1"])),
    ]  # fmt: skip


def test_a_vm_made_again_at_its_index_adopts_what_was_kept() -> None:
    """Scaling out makes db-1 again (the lowest free index): its template names data-1, which
    exists without an owner, so no DataVolume is made and the VM adopts it."""
    gone = VMState(namespace="default", name="db-1", deleted=True, version=9,
                   labels=vm(1).labels)  # fmt: skip
    kept = {**dict([volume(0)]), **dict([volume(1, owner="")])}
    [(where, created)] = ops(pool(2), {"db-0": vm(0), "db-1": gone}, kept)
    assert (where, type(created)) == ("vm/db-1@9", m.VMCreated)
    assert ops(pool(2), {"db-0": vm(0), "db-1": vm(1)}, kept) == [
        ("volume/data-1@4", m.VolumeAdopted(
            owner="db-1", reason="kept at index 1 of pool db: db-1 names it")),
        ("vmpool/db@7", m.VMPoolStateReused(vm="db-1", volumes=["data-1"])),
    ]  # fmt: skip


def test_a_name_waits_while_its_deleted_vm_still_owns_disks() -> None:
    """A deleted VM's DataVolumes are being deleted (or released): the VM made again at its
    index waits, else it would take a disk on its way out and make none of its own."""
    gone = VMState(namespace="default", name="db-1", deleted=True, version=9,
                   labels=vm(1).labels)  # fmt: skip
    assert ops(pool(2), {"db-0": vm(0), "db-1": gone}, dict(volume(i) for i in (0, 1))) == []


def test_opportunistic_state_preservation_keeps_what_someone_else_deletes() -> None:
    kept = pool(2, scaleInStrategy={"opportunistic": {"statePreservation": "Offline"}})
    volumes = dict(volume(i) for i in (0, 1))
    why = "kept when db-1 was deleted (pool db, opportunistic: Offline)"

    def left(pools: dict[str, ReplicaSetState]) -> list[tuple[str, m.Event]]:
        return [(ref.name, e) for ref, events, _ in leftovers(vm(1), volumes, pools)
                for e in events]  # fmt: skip

    assert left({"virt.vmpool.default.db": kept}) == [
        ("data-1", m.VolumeReleased(owner="db-1", reason=why)),
        ("db", m.VMPoolStatePreserved(vm="db-1", volumes=["data-1"], strategy="opportunistic")),
    ]
    # Under proactive, someone else's deletion takes them (KubeVirt's opportunistic default).
    assert left({"virt.vmpool.default.db": pool(2)}) == [("data-1", m.VolumeDeleted())]


def test_changed_data_volume_templates_remake_running_vms_one_budget_at_a_time() -> None:
    """KubeVirt's proactive update deletes a running VM whose dataVolumeTemplates changed (it is
    made again with new DataVolumes), `maxUnavailable` at a time, in the sortPolicy's order; a
    stopped one only takes the new spec (its missing DataVolumes are made with it)."""
    running = {f"db-{i}": vm(i, phase="Running", ready=True) for i in (0, 1)}
    volumes = dict(volume(i) for i in (0, 1))
    bigger = pool(2, size="2Mi", maxUnavailable=1)
    why = "pool db: dataVolumeTemplates changed (updateStrategy proactive): remade with new ones"
    assert ops(bigger, running, volumes) == [
        ("vm/db-1@3", m.VMDeleteRequested(reason=why)),
        ("vmpool/db@7", m.VMPoolVMReplaced(vm="db-1", reason="dataVolumeTemplates changed")),
    ]  # fmt: skip
    # One of them on its way out: nothing more until it is made again (KubeVirt: scale first).
    leaving = {**running, "db-1": vm(1, phase="Running", status="Terminating")}
    assert ops(bigger, leaving, volumes) == []
    stopped = {f"db-{i}": vm(i) for i in (0, 1)}  # (runStrategy Always: started with it)
    changed = [(where, type(e).__name__) for where, e in ops(bigger, stopped, volumes)]
    assert changed == [(f"vm/db-{i}@3", kind) for i in (0, 1)
                       for kind in ("VMSpecChanged", "VMStartRequested")]  # fmt: skip
    later = pool(2, size="2Mi", updateStrategy={"opportunistic": {}})
    changed = [(where, type(e).__name__) for where, e in ops(later, running, volumes)]
    assert changed == [("vm/db-0@3", "VMSpecChanged"), ("vm/db-1@3", "VMSpecChanged")]


POOL: dict[str, Any] = {
    "apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
    "metadata": {"name": "db"},
    "spec": {"virtualMachineTemplate": {"spec": {"runStrategy": "Halted", "template": {
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}}},
}  # fmt: skip


@pytest.mark.parametrize("strategy", ["proactive", "opportunistic"])
def test_state_preservation_is_checked(strategy: str) -> None:
    """KubeVirt's CRD enum, in the API server's words; `Online` is read as `Offline` does (its
    controller keeps no memory either), with a warning; `unmanaged` has no such field."""

    def given(value: Any) -> dict[str, Any]:
        doc = {**POOL, "spec": {**POOL["spec"], "scaleInStrategy": {
            strategy: {"statePreservation": value}}}}  # fmt: skip
        return doc

    field = f"spec.scaleInStrategy.{strategy}.statePreservation"
    for bad, shown in (("Suspended", '"Suspended"'), (True, "True")):
        with pytest.raises(ValidationError) as err:
            to_commands(given(bad))
        assert (err.value.field, err.value.message) == (field, (
            f"{field}: Unsupported value: {shown}: supported values: "
            '"Disabled", "Offline", "Online"'))  # fmt: skip
    assert to_commands(given("Offline"))[1] == to_commands(given("Disabled"))[1] == []
    assert to_commands(given("Online"))[1] == [
        f"warning: {field}: Online keeps the DataVolumes as Offline does, and no memory (as "
        "KubeVirt's)"
    ]
