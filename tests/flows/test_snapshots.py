"""VM snapshots and restores, end to end on the test driver: orchestrator, bus, node worker, disks.

The test driver leaves the disk files alone, so what a snapshot copies and a restore puts back
is checked byte for byte in the files the VM's volumes name. Decisions that need no node (every
rejection) are checked on the pure `decide` too, with the words a user gets.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from clirun import Result, virtbus
from driverstack import Stack, seed
from images import head, write

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from events.errors import ValidationError
from events.manifest import to_commands
from events.names import Ref
from events.state import VMState, apply
from orchestrator.decide import decide


def disks(st: Stack) -> tuple[Path, Path]:
    """The seed VM's two persistent volumes on node-a: its PVC and its hostDisk."""
    node = st.node_dir("node-a")
    return node / "volumes/default/iso-centos7/disk.img", node / "host/data/disk.img"


async def until_event(st: Stack, name: str, kind: type[m.Event], *, count: int = 1) -> m.Event:
    for _ in range(400):
        found = [r.envelope.data for r in await st.store.read(Ref.vm(name))
                 if isinstance(r.envelope.data, kind)]  # fmt: skip
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.05)
    pytest.fail(f"{name}: no {kind.__name__} #{count}")


async def seed_running(st: Stack) -> None:
    """The seed VM running on node-a, its volumes provided there."""
    st.provide_seed_volumes("node-a")
    await st.node("node-a")
    await send(st.nc, seed())
    await send(st.nc, c.StartVM(name="centos7"))
    await st.until("centos7", "Running")


async def cli(st: Stack, *args: str) -> Result:
    return await virtbus(*args, "--server", st.url)


async def test_snapshot_of_a_running_vm_and_its_restore(stack: Stack) -> None:
    await seed_running(stack)
    pvc, host = disks(stack)
    write(pvc, b"before")
    write(host, b"BEFORE")

    await send(stack.nc, c.SnapshotVM(name="centos7", snapshot="snap1"))
    done = await until_event(stack, "centos7", m.SnapshotSucceeded)
    assert isinstance(done, m.SnapshotSucceeded) and done.node == "node-a"
    snap = (await stack.state("centos7")).snapshots["snap1"]
    assert (snap.phase, snap.online, snap.volumes) == ("Succeeded", True, ["cdromiso", "harddrive"])
    assert snap.skipped == {  # KubeVirt's words for an ephemeral volume
        "virtiocontainerdisk": "Snapshot is not supported for this volumeSource type "
        "[virtiocontainerdisk]"
    }
    kinds = await stack.kinds("centos7")
    assert "DomainPaused" not in kinds and "DomainResumed" not in kinds  # our own pause is no news
    assert (await stack.state("centos7")).status == "Running"  # and the VM runs on

    write(pvc, b"after!")
    write(host, b"AFTER!")
    changed = seed()
    template = changed.spec["template"]["spec"]
    template["domain"]["cpu"]["cores"] = 2
    with pytest.raises(Rejected, match='VirtualMachine "centos7" is not stopped'):
        await send(stack.nc, c.RestoreVM(name="centos7", snapshot="snap1", restore="r1"))
    await send(stack.nc, changed)  # the seed says `running: false`: this stops it, as in KubeVirt
    await stack.until("centos7", "Stopped")
    await send(stack.nc, c.RestoreVM(name="centos7", snapshot="snap1", restore="r1"))
    await until_event(stack, "centos7", m.RestoreSucceeded)
    assert (head(pvc), head(host)) == (b"before", b"BEFORE")  # the volumes are back
    s = await stack.state("centos7")
    assert s.spec["template"]["spec"]["domain"]["cpu"]["cores"] == 1  # and so is the spec
    assert s.restore is not None and s.restore.complete
    await send(stack.nc, c.StartVM(name="centos7"))
    await stack.until("centos7", "Running")


async def test_an_offline_snapshot_the_cli_and_delete(stack: Stack) -> None:
    await seed_running(stack)
    await send(stack.nc, c.StopVM(name="centos7"))
    await stack.until("centos7", "Stopped")  # stopped: the volumes stay on the node it ran on

    made = await cli(stack, "snapshot", "centos7", "offline")
    assert made.code == 0, made.err
    assert made.out.strip() == "virtualmachinesnapshot.snapshot.kubevirt.io/offline created"
    await until_event(stack, "centos7", m.SnapshotSucceeded)
    got = await cli(stack, "get", "vmsnapshots", "-o", "json")
    assert got.code == 0, got.err
    (obj,) = json.loads(got.out)["items"]
    assert obj["kind"] == "VirtualMachineSnapshot"
    assert obj["spec"]["source"] == {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                                     "name": "centos7"}  # fmt: skip
    assert (obj["status"]["phase"], obj["status"]["readyToUse"]) == ("Succeeded", True)
    assert obj["status"]["indications"] == []  # taken offline
    copies = stack.node_dir("node-a") / "snapshots" / "default" / "centos7"
    (copy,) = copies.iterdir()
    assert copy.name.startswith("offline-") and (copy / "harddrive.img").is_file()

    again = await cli(stack, "snapshot", "centos7", "offline")
    assert again.code == 1
    assert 'virtualmachinesnapshots.snapshot.kubevirt.io "offline" already exists' in again.err

    gone = await cli(stack, "delete", "vmsnapshot", "offline")
    assert gone.code == 0, gone.err
    for _ in range(200):
        if not any(copies.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert list(copies.iterdir()) == []  # the node removed the copies
    listed = await cli(stack, "get", "vmsnapshots")
    assert listed.out.strip() == "No resources found in default namespace."


async def test_a_restarted_worker_sweeps_copies_the_log_does_not_know(stack: Stack) -> None:
    stray = stack.node_dir("node-a") / "snapshots" / "default" / "ghost" / "old-7.partial"
    stray.mkdir(parents=True)
    (stray / "disk0.img").write_bytes(b"half a copy")
    await stack.node("node-a")
    assert not stray.exists()


async def test_a_snapshot_manifest_is_applied(stack: Stack) -> None:
    await seed_running(stack)
    doc = {
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "from-yaml"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                            "name": "centos7"}},
    }  # fmt: skip
    (cmd,), warnings = to_commands(doc)
    assert warnings == []
    await send(stack.nc, cmd)
    await until_event(stack, "centos7", m.SnapshotSucceeded)
    assert (await stack.state("centos7")).snapshots["from-yaml"].phase == "Succeeded"


# --- decisions: each refusal says why, and names the field --------------------------------------


def _state(*events: m.Event) -> VMState:
    from datetime import UTC, datetime

    from events.envelope import Envelope

    s = VMState()
    for i, e in enumerate(events, 1):
        env = Envelope(id=str(i), source="t", type="t", subject="vm/default/v",
                       time=datetime.now(UTC), version=i, data=e)  # type: ignore[arg-type]  # fmt: skip
        s = apply(s, env)
    return s


def _created(**spec_changes: object) -> m.VMCreated:
    return m.VMCreated(spec={**seed("v").spec, **spec_changes})


def _rejected(s: VMState, cmd: c.Command) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        decide(s, cmd)
    return err.value


def test_a_vm_that_never_ran_cannot_snapshot_its_persistent_volumes() -> None:
    err = _rejected(_state(_created()), c.SnapshotVM(name="v", snapshot="s"))
    assert "it has never run, so no node holds its volumes cdromiso, harddrive" in err.message


def test_a_vm_with_only_ephemeral_volumes_is_snapshotted_at_once() -> None:
    spec = seed("v").spec
    template = spec["template"]["spec"]
    template["volumes"] = [v for v in template["volumes"] if "containerDisk" in v]
    template["domain"]["devices"]["disks"] = [
        d for d in template["domain"]["devices"]["disks"] if d["name"] == "virtiocontainerdisk"
    ]
    events = decide(_state(m.VMCreated(spec=spec)), c.SnapshotVM(name="v", snapshot="s"))
    assert [type(e).__name__ for e in events] == ["SnapshotRequested", "SnapshotSucceeded"]


def test_a_lun_disk_refuses_the_snapshot_naming_it() -> None:
    spec = seed("v").spec
    for d in spec["template"]["spec"]["domain"]["devices"]["disks"]:
        if d["name"] == "harddrive":
            d.pop("disk")
            d["lun"] = {"bus": "scsi"}
    s = _state(m.VMCreated(spec=spec), m.VMScheduled(node="n", vmi_uid="u"),
               m.DomainStarted(node="n"))  # fmt: skip
    err = _rejected(s, c.SnapshotVM(name="v", snapshot="s"))
    assert 'volume "harddrive" is a lun disk' in err.message
    assert err.field == "spec.template.spec.volumes[harddrive]"


def test_snapshot_and_restore_refusals() -> None:
    ran = (_created(), m.VMScheduled(node="n", vmi_uid="u"), m.DomainStarted(node="n"))
    s = _state(*ran, m.SnapshotRequested(snapshot="s1", node="n", volumes=["harddrive"]))
    err = _rejected(s, c.SnapshotVM(name="v", snapshot="s2"))
    assert err.message == 'VirtualMachine "v" snapshot "s1" is in progress'
    err = _rejected(s, c.RestoreVM(name="v", snapshot="s1"))
    assert err.message == 'VirtualMachineSnapshot "s1" is not ready to use (phase InProgress)'
    assert _rejected(s, c.DeleteSnapshot(name="v", snapshot="s1")).field == "snapshot"
    err = _rejected(s, c.RestoreVM(name="v", snapshot="nope"))
    assert err.message == 'virtualmachinesnapshots.snapshot.kubevirt.io "nope" not found'
    assert err.field == "snapshot"

    stopped = _state(*ran, m.SnapshotRequested(snapshot="s1", node="n", volumes=["harddrive"]),
                     m.SnapshotSucceeded(snapshot="s1", node="n"), m.VMStopRequested(),
                     m.DomainStopped(node="n", reason="shutdown"), m.VMStopped(reason="stopped"),
                     m.RestoreRequested(snapshot="s1", restore="r1", node="n"))  # fmt: skip
    err = _rejected(stopped, c.StartVM(name="v"))
    assert err.message == 'Cannot start VM until restore "r1" completes'
    err = _rejected(stopped, c.SnapshotVM(name="v", snapshot="s3"))
    assert err.message == 'VirtualMachine "v" restore "r1" is in progress'
    err = _rejected(stopped, c.DeleteSnapshot(name="v", snapshot="s1"))
    assert err.message == 'VirtualMachineSnapshot "s1" is being restored'


def test_restore_and_snapshot_manifests_become_commands() -> None:
    doc = {
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
        "metadata": {"name": "r1", "namespace": "prod"},
        "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "db"},
                 "virtualMachineSnapshotName": "nightly"},
    }  # fmt: skip
    (cmd,), _ = to_commands(doc)
    assert cmd == c.RestoreVM(name="db", namespace="prod", snapshot="nightly", restore="r1",
                              id=cmd.id)  # fmt: skip
    bad = {**doc, "spec": {**doc["spec"], "target": {"kind": "Pod", "name": "x"}}}
    with pytest.raises(ValidationError) as err:
        to_commands(bad)
    assert err.value.field == "spec.target.kind"
    wrong_api = {**doc, "apiVersion": "kubevirt.io/v1"}
    with pytest.raises(ValidationError) as err:
        to_commands(wrong_api)
    assert err.value.field == "apiVersion"


def test_the_vm_status_says_which_volumes_a_snapshot_takes() -> None:
    from events.render import vm_object

    obj = vm_object(_state(_created()))
    assert obj["status"]["volumeSnapshotStatuses"] == [
        {"name": "cdromiso", "enabled": True},
        {"name": "harddrive", "enabled": True},
        {
            "name": "virtiocontainerdisk",
            "enabled": False,
            "reason": "Snapshot is not supported for this volumeSource type [virtiocontainerdisk]",
        },
    ]
