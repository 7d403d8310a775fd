"""The control plane end to end on a real nats-server.

Intake, decisions, scheduling, run strategies, node loss, races. Nodes are simulated through the
public bus contract (SimNode), as the issue allows until real workers exist.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from clusterkit import Cluster, seed_apply, start_orchestrator
from nats.aio.client import Client
from waits import settle

from bench.simnode import SimNode
from bus.client import Rejected
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import commands as c
from events import model as m
from events import work as w
from events.envelope import Recorded, encode
from events.names import Ref
from events.state import VMState
from orchestrator.controller import Controller


def kinds(history: list[Recorded]) -> list[str]:
    return [type(r.envelope.data).__name__ for r in history]


# --- intake and validation ---------------------------------------------------------------------


async def test_seed_manifest_applies_starts_and_runs(cluster: Cluster) -> None:
    await cluster.node("node-a")
    out = await cluster.send(seed_apply())
    assert out.events == ["io.virtbus.vm.created.v1"]
    assert (await cluster.send(seed_apply())).events == []  # unchanged: a no-op
    start = await cluster.send(c.StartVM(name="centos7", actor="alice"))
    s = await cluster.until("centos7", lambda s: s.status == "Running")
    assert (s.phase, s.node, s.ready) == ("Running", "node-a", True)
    history = await cluster.history("centos7")
    assert kinds(history) == [
        "VMCreated", "VMStartRequested", "VMScheduled", "IPAllocated", "LauncherCreated",
        "DomainDefined", "DomainStarted",
    ]  # fmt: skip
    scheduled = history[2].envelope
    assert scheduled.correlationid == start.command_id  # the decision traces to the command
    assert scheduled.causationid == history[1].envelope.id
    assert history[1].envelope.actor == "alice"


async def test_changed_manifest_records_the_change_and_restart_required(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.send(seed_apply(running=True))
    await cluster.until("centos7", lambda s: s.status == "Running")
    changed = seed_apply(running=True)
    changed.spec["template"]["spec"]["domain"]["cpu"]["cores"] = 2
    out = await cluster.send(changed)
    assert out.events == ["io.virtbus.vm.spec_changed.v1"]
    event = (await cluster.history("centos7"))[-1].envelope.data
    assert isinstance(event, m.VMSpecChanged)
    assert event.restart_required
    assert "template.spec.domain.cpu" in event.changed
    s = await cluster.state("centos7")
    assert s.restart_required and s.status == "Running"


@pytest.mark.parametrize(
    ("setup", "cmd", "reason"),
    [
        ([], c.StartVM(name="ghost"), 'virtualmachine.kubevirt.io "ghost" not found'),
        (["create"], c.StopVM(name="vm1"), "VM is not running"),
        (["create"], c.PauseVM(name="vm1"), "VMI is not running"),
        (["create"], c.UnpauseVM(name="vm1"), "VMI is not paused"),
        (["create"], c.RestartVM(name="vm1"), "VM is not running"),
        (["create"], c.MigrateVM(name="vm1", target_node="nowhere"), 'nodes "nowhere" not found'),
        (["create"], c.UndeleteVM(name="vm1"), 'VM "vm1" is not deleted'),
        (["create", "start"], c.StartVM(name="vm1"), "VM is already running"),
        (["create", "start"], c.UnpauseVM(name="vm1"), "VMI is not paused"),
        (
            ["create", "start"],
            c.MigrateVM(name="vm1", target_node="node-a"),
            'the VMI is already running on node "node-a"',
        ),
        (
            ["create", "start"],
            c.MigrateVM(name="vm1", target_node="nowhere"),
            'nodes "nowhere" not found',
        ),
        (["create", "start"], c.CancelMigration(name="vm1"), "no migration in progress for VMI"),
    ],
)
async def test_state_rejections_become_command_rejected_events(
    cluster: Cluster, setup: list[str], cmd: c.Command, reason: str
) -> None:
    await cluster.node("node-a")
    if "create" in setup:
        await cluster.send(seed_apply("vm1"))
    if "start" in setup:
        await cluster.send(c.StartVM(name="vm1"))
        await cluster.until("vm1", lambda s: s.status == "Running")
    with pytest.raises(Rejected, match=reason):
        await cluster.send(cmd)
    last = (await cluster.store.read(cmd.target))[-1].envelope
    assert isinstance(last.data, m.CommandRejected)
    assert last.data.reason.startswith(reason.split('"', maxsplit=1)[0])
    assert last.data.command == type(cmd).__name__


async def test_bad_spec_is_rejected_naming_the_field(cluster: Cluster) -> None:
    bad = seed_apply("broken")
    bad.spec["template"]["spec"]["domain"]["devices"]["disks"][1]["name"] = "nowhere"
    with pytest.raises(Rejected) as exc:
        await cluster.send(bad)
    assert exc.value.field == "spec.template.spec.domain.devices.disks[1].name"
    history = await cluster.history("broken")
    assert kinds(history) == ["CommandRejected"]


async def _api(nc: Client, body: bytes) -> dict[str, Any]:
    msg = await nc.request("virt.api.command", body, timeout=20)
    result: dict[str, Any] = json.loads(msg.data)
    return result


async def test_garbage_sent_to_the_api_is_rejected_and_recorded(cluster: Cluster) -> None:
    cases = [
        (b"{not json", "not valid JSON", ""),
        (b'{"kind": "FlyVM", "name": "a"}', "Invalid value 'FlyVM'", "kind"),
        (b'{"kind": "StartVM", "name": "Bad_Name"}', "Expected `str` matching regex", "name"),
        (b'{"kind": "StartVM"}', "missing required field `name`", "name"),
        (b"[1, 2]", "Expected `object`", ""),
    ]
    for body, reason, field in cases:
        out = await _api(cluster.nc, body)
        assert out["accepted"] is False, body
        assert reason in out["reason"], (body, out)
        assert out["field"] == field, (body, out)
    rejected = await cluster.store.read(Ref("intake", "_", "rejected"))
    assert len(rejected) == len(cases)  # each one recorded, none lost
    assert all(isinstance(r.envelope.data, m.CommandRejected) for r in rejected)
    # The orchestrator is still there and judging.
    assert (await _api(cluster.nc, encode(c.StartVM(name="nobody"))))["accepted"] is False


async def test_a_bare_nats_client_publishes_a_command(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.send(seed_apply("plain"))
    # Any NATS client: a JSON body on the VM's command subject, fire and forget.
    bare = await nats.connect(cluster.nc.connected_url.geturl())  # type: ignore[union-attr]
    try:
        js = bare.jetstream()
        body = json.dumps({"kind": "StartVM", "id": "from-bare-client", "name": "plain"})
        await js.publish("virt.cmd.vm.default.plain.StartVM", body.encode())
    finally:
        await bare.close()
    s = await cluster.until("plain", lambda s: s.status == "Running")
    assert s.node == "node-a"
    started = [
        r for r in await cluster.history("plain") if r.envelope.correlationid == "from-bare-client"
    ]
    assert kinds(started)[:2] == ["VMStartRequested", "VMScheduled"]


async def test_a_command_published_for_another_vm_is_rejected(cluster: Cluster) -> None:
    await cluster.send(seed_apply("target"))
    js = cluster.nc.jetstream()
    body = encode(c.StartVM(name="target", id="mismatch-1"))
    await js.publish("virt.cmd.vm.default.other.StartVM", body)
    for _ in range(100):
        rejected = await cluster.store.read(Ref("intake", "_", "rejected"))
        if rejected:
            break
        await asyncio.sleep(0.05)
    data = rejected[-1].envelope.data
    assert isinstance(data, m.CommandRejected)
    assert (data.command_id, data.field) == ("mismatch-1", "name")
    assert "published for vm/default/other" in data.reason
    assert kinds(await cluster.history("target")) == ["VMCreated"]


async def test_the_same_command_id_is_carried_out_once(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.send(seed_apply("once"))
    cmd = c.StartVM(name="once", id="start-once-1")
    first = await cluster.send(cmd)
    again = await cluster.send(cmd)
    assert not first.duplicate and again.duplicate
    assert again.accepted  # the retry learns the original outcome, not "already running"
    await cluster.until("once", lambda s: s.status == "Running")
    assert kinds(await cluster.history("once")).count("VMStartRequested") == 1


# --- scheduling and nodes ----------------------------------------------------------------------


async def test_unschedulable_until_a_node_fits(cluster: Cluster) -> None:
    await cluster.node("small", memory_bytes=1 << 30)  # 1 GiB: the seed VM asks 2G
    await cluster.send(seed_apply(running=True))
    s = await cluster.until("centos7", lambda s: s.status == "ErrorUnschedulable")
    assert s.reason == "0/1 nodes are available: 1 Insufficient memory."
    await cluster.node("big", memory_bytes=8 << 30)
    s = await cluster.until("centos7", lambda s: s.status == "Running")
    assert s.node == "big"


async def test_node_selector_and_least_loaded(cluster: Cluster) -> None:
    await cluster.node("a", memory_bytes=8 << 30, labels={"zone": "x"})
    await cluster.node("b", memory_bytes=8 << 30, labels={"zone": "y"})
    pinned = seed_apply("pinned", running=True)
    pinned.spec["template"]["spec"]["nodeSelector"] = {"zone": "y"}
    await cluster.send(pinned)
    assert (await cluster.until("pinned", lambda s: s.status == "Running")).node == "b"
    await cluster.send(seed_apply("free", running=True))
    assert (await cluster.until("free", lambda s: s.status == "Running")).node == "a"


async def test_node_loss_fails_over_per_run_strategy(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    await cluster.send(seed_apply("always", running=True))
    await cluster.until("always", lambda s: s.status == "Running")
    await cluster.send(seed_apply("manual", runStrategy="Manual"))
    await cluster.send(c.StartVM(name="manual"))
    await cluster.until("manual", lambda s: s.status == "Running")
    await cluster.node("node-b")
    a.heartbeating = False
    s = await cluster.until("always", lambda s: s.status == "Running" and s.node == "node-b")
    assert s.failures == 1
    m_state = await cluster.until("manual", lambda s: s.status == "Stopped")
    assert "node node-a was lost" in m_state.reason
    nodes = await cluster.store.read(Ref.node("node-a"))
    assert kinds(nodes)[-1] == "NodeLost"
    failed = [r.envelope.data for r in await cluster.history("always")]
    assert m.VMFailed(reason="node node-a was lost", node="node-a") in failed


# --- run strategies ------------------------------------------------------------------------------


async def _running(cluster: Cluster, name: str, strategy: str) -> SimNode:
    node = cluster.nodes[0] if cluster.nodes else await cluster.node("node-a")
    await cluster.send(seed_apply(name, runStrategy=strategy))
    if strategy in ("Manual", "Halted"):
        await cluster.send(c.StartVM(name=name))
    await cluster.until(name, lambda s: s.status == "Running")
    return node


@pytest.mark.parametrize(
    ("strategy", "event", "after"),
    [
        ("Always", "crashed", "Running"),
        ("Always", "shutdown", "Running"),
        ("RerunOnFailure", "crashed", "Running"),
        ("RerunOnFailure", "shutdown", "Stopped"),
        ("Once", "crashed", "Stopped"),
        ("Manual", "crashed", "Stopped"),
    ],
)
async def test_run_strategy_after_the_guest_ends(
    cluster: Cluster, strategy: str, event: str, after: str
) -> None:
    name = f"rs-{uuid.uuid4().hex[:6]}"
    node = await _running(cluster, name, strategy)
    before = len(node.work)
    await node.crash(Ref.vm(name), reason=event)
    s = await cluster.until(
        name, lambda s: s.status == after and (after != "Running" or len(node.work) > before)
    )
    assert s.status == after
    restarted = len([w for w in node.work if type(w).__name__ == "Start"]) == 2
    assert restarted == (after == "Running")


async def test_halted_vm_never_starts_by_itself(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.send(seed_apply("halted"))
    await asyncio.sleep(0.5)
    assert kinds(await cluster.history("halted")) == ["VMCreated"]
    assert (await cluster.state("halted")).status == "Stopped"


async def test_repeated_crashes_back_off(cluster: Cluster) -> None:
    node = await _running(cluster, "flaky", "Always")
    await node.crash(Ref.vm("flaky"))  # first failure: restarted at once
    await cluster.until("flaky", lambda s: s.status == "Running" and s.failures == 1)
    await node.crash(Ref.vm("flaky"))  # second: CrashLoopBackOff for 5 s
    s = await cluster.until("flaky", lambda s: s.status == "CrashLoopBackOff")
    assert s.failures == 2
    backoff = [r.envelope.data for r in await cluster.history("flaky")][-1]
    assert backoff == m.VMBackoff(delay_seconds=5.0, failures=2)
    s = await cluster.until("flaky", lambda s: s.status == "Running", within=15)
    assert s.failures == 2  # counting goes on until it stays up or a user starts it


async def test_stop_and_restart_and_pause(cluster: Cluster) -> None:
    node = await _running(cluster, "life", "Always")
    await cluster.send(c.PauseVM(name="life"))
    await cluster.until("life", lambda s: s.status == "Paused")
    with pytest.raises(Rejected, match="VMI is already paused"):
        await cluster.send(c.PauseVM(name="life"))
    await cluster.send(c.UnpauseVM(name="life"))
    await cluster.until("life", lambda s: s.status == "Running")
    await cluster.send(c.RestartVM(name="life"))
    await cluster.until("life", lambda s: s.status == "Running" and len(node.work) >= 5)
    await cluster.send(c.StopVM(name="life"))
    s = await cluster.until("life", lambda s: s.status == "Stopped")
    assert s.run_strategy == "Halted"  # like `virtctl stop`: nothing restarts it
    actions = [type(w).__name__ for w in node.work]
    assert actions == ["Start", "Pause", "Unpause", "Stop", "Start", "Stop"]


async def test_delete_keeps_disks_and_undelete_brings_it_back(cluster: Cluster) -> None:
    await _running(cluster, "doomed", "Always")
    await cluster.send(c.DeleteVM(name="doomed"))
    s = await cluster.until("doomed", lambda s: s.deleted)
    deleted = [r.envelope.data for r in await cluster.history("doomed")][-1]
    assert deleted == m.VMDeleted(disks=["pvc/iso-centos7", "hostDisk//data/disk.img"])
    with pytest.raises(Rejected, match="not found"):
        await cluster.send(c.StartVM(name="doomed"))
    await cluster.send(c.UndeleteVM(name="doomed"))
    s = await cluster.state("doomed")
    assert (s.exists, s.status) == (True, "Stopped")


# --- disk hotplug --------------------------------------------------------------------------------


def pvc(name: str) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": name}}


def add_volume(vm: str, volume: str, *, persist: bool = False, **disk: Any) -> c.AddVolume:
    """What `virtbus addvolume VM --volume-name VOLUME` sends."""
    return c.AddVolume(name=vm, volume=pvc(volume), persist=persist,
                       disk={"name": volume, "disk": {"bus": "scsi"}, **disk})  # fmt: skip


def spec_volumes(s: VMState) -> list[str]:
    return [v["name"] for v in s.spec["template"]["spec"]["volumes"]]


def spec_disks(s: VMState) -> list[str]:
    return [d["name"] for d in s.spec["template"]["spec"]["domain"]["devices"]["disks"]]


@pytest.mark.parametrize(
    ("running", "cmd", "reason", "field"),
    [
        (False, add_volume("vm1", "data"), "VMI is not running", "name"),
        (False, c.RemoveVolume(name="vm1", volume="data"), 'volume "data" not found', "volume"),
        (False, c.RemoveVolume(name="vm1", volume="harddrive"), "VMI is not running", "name"),
        (True, add_volume("vm1", "cdromiso"), 'volume "cdromiso" already exists', "volume.name"),
        (True, add_volume("vm1", "Data"), "not a DNS-1123 label", "volume.name"),
        (
            True,
            c.AddVolume(name="vm1", volume={"name": "d", "hostDisk": {"path": "/x"}}),
            "hotplug takes a persistentVolumeClaim volume",
            "volume",
        ),
        (
            True,
            add_volume("vm1", "data", disk={"bus": "virtio"}),
            "hotplug needs the scsi bus",
            "disk.disk.bus",
        ),
        (True, c.RemoveVolume(name="vm1", volume="data"), 'volume "data" not found', "volume"),
        (
            True,
            c.RemoveVolume(name="vm1", volume="harddrive"),
            'volume "harddrive" is not hotplugged',
            "volume",
        ),
    ],
)
async def test_hotplug_rejections_name_the_field(
    cluster: Cluster, running: bool, cmd: c.Command, reason: str, field: str
) -> None:
    await cluster.node("node-a")
    await cluster.send(seed_apply("vm1", running=running))
    if running:
        await cluster.until("vm1", lambda s: s.status == "Running")
    with pytest.raises(Rejected, match=reason) as exc:
        await cluster.send(cmd)
    assert exc.value.field == field
    last = (await cluster.history("vm1"))[-1].envelope.data
    assert isinstance(last, m.CommandRejected)
    assert (last.command, last.field) == (type(cmd).__name__, field)


async def test_hotplug_attaches_and_detaches_on_the_running_vm(cluster: Cluster) -> None:
    node = await _running(cluster, "hot", "Always")
    out = await cluster.send(add_volume("hot", "data", serial="D1"))
    assert out.events == ["io.virtbus.vm.volume_attach_requested.v1"]
    s = await cluster.until("hot", lambda s: s.volumes == {"data": "Ready"})
    assert "data" not in spec_volumes(s)  # not persisted: the VM spec is unchanged
    with pytest.raises(Rejected, match='volume "data" already exists'):
        await cluster.send(add_volume("hot", "data"))
    [attach] = [i for i in node.work if isinstance(i, w.AttachVolume)]
    assert (attach.volume, attach.disk) == (
        pvc("data"), {"name": "data", "disk": {"bus": "scsi"}, "serial": "D1"}
    )  # fmt: skip
    assert (attach.node, attach.vmi_uid) == ("node-a", s.vmi_uid)

    out = await cluster.send(c.RemoveVolume(name="hot", volume="data"))
    assert out.events == ["io.virtbus.vm.volume_detach_requested.v1"]
    s = await cluster.until("hot", lambda s: s.volumes == {})
    assert [type(i).__name__ for i in node.work] == ["Start", "AttachVolume", "DetachVolume"]
    volume_events = [k for k in kinds(await cluster.history("hot")) if k.startswith("Volume")]
    assert volume_events == [
        "VolumeAttachRequested", "VolumeAttached", "VolumeDetachRequested", "VolumeDetached"
    ]  # fmt: skip


async def test_hotplug_does_not_outlive_the_instance_unless_persisted(cluster: Cluster) -> None:
    await _running(cluster, "keep", "Always")
    await cluster.send(add_volume("keep", "scratch"))
    out = await cluster.send(add_volume("keep", "data", persist=True))
    assert out.events == [
        "io.virtbus.vm.spec_changed.v1", "io.virtbus.vm.volume_attach_requested.v1"
    ]  # fmt: skip
    s = await cluster.until("keep", lambda s: s.volumes == {"scratch": "Ready", "data": "Ready"})
    assert not s.restart_required  # hotplugged live: nothing waits for a restart
    assert (spec_volumes(s)[-1], spec_disks(s)[-1]) == ("data", "data")
    await cluster.send(c.StopVM(name="keep"))
    s = await cluster.until("keep", lambda s: s.status == "Stopped")
    assert (s.volumes, s.hotplug) == ({}, {})
    assert "data" in spec_volumes(s) and "scratch" not in spec_volumes(s)

    # Stopped: only --persist changes anything, and only the spec.
    out = await cluster.send(add_volume("keep", "more", persist=True))
    assert out.events == ["io.virtbus.vm.spec_changed.v1"]
    out = await cluster.send(c.RemoveVolume(name="keep", volume="data", persist=True))
    assert out.events == ["io.virtbus.vm.spec_changed.v1"]
    s = await cluster.state("keep")
    assert "more" in spec_volumes(s) and "data" not in spec_volumes(s)
    assert "more" in spec_disks(s) and "data" not in spec_disks(s)
    assert s.volumes == {}


# --- several orchestrators -----------------------------------------------------------------------


async def test_two_orchestrators_decide_once(cluster: Cluster) -> None:
    stop2, second = await start_orchestrator(cluster.nc, cluster.data_dir / "orchestrator-2")
    try:
        await cluster.node("node-a")
        await asyncio.sleep(0.3)
        for i in range(5):
            await cluster.send(seed_apply(f"race-{i}", running=True))
        for i in range(5):
            await cluster.until(f"race-{i}", lambda s: s.status == "Running")
            history = kinds(await cluster.history(f"race-{i}"))
            assert history.count("VMScheduled") == 1
            assert history.count("VMCreated") == 1  # created starting: one decision
            assert history.count("VMStartRequested") == 0
        starts = [w for w in cluster.nodes[0].work if type(w).__name__ == "Start"]
        assert len(starts) == 5  # one work item per VM, though both controllers decided
    finally:
        stop2.set()
        await second


# --- replica sets --------------------------------------------------------------------------------

RS_DOC = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstanceReplicaSet",
    "metadata": {"name": "web"},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}},
            },
        },
    },
}


async def _replicas(cluster: Cluster, rs: str, count: int) -> list[VMState]:
    """Poll until exactly `count` replicas of `rs` exist and run."""
    for _ in range(300):
        states = [await cluster.state(f"{rs}-{i}") for i in range(count + 3)]
        live = [s for s in states if s.exists]
        if len(live) == count and all(s.status == "Running" for s in live):
            return live
        await asyncio.sleep(0.05)
    pytest.fail(f"{rs}: wanted {count} running replicas; have {[(s.name, s.status) for s in live]}")


async def test_replica_set_keeps_n_replicas_and_scales(cluster: Cluster) -> None:
    from events.manifest import to_commands

    node = await cluster.node("node-a")
    cmds, _ = to_commands(RS_DOC)
    out = await cluster.send(cmds[0])
    assert out.events == ["io.virtbus.rs.created.v1"]
    live = await _replicas(cluster, "web", 3)
    assert [s.name for s in live] == ["web-0", "web-1", "web-2"]
    assert all(s.labels == {"app": "web", "virtbus.io/replicaset": "web"} for s in live)
    url = cluster.nc.connected_url.geturl()  # type: ignore[union-attr]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "virtbus", "scale", "web", "--replicas", "5", "--server",
        url, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert (proc.returncode, out) == (
        0,
        b"virtualmachineinstancereplicaset.kubevirt.io/web scaled\n",
    )
    await _replicas(cluster, "web", 5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "virtbus", "get", "vmirs", "--server", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    header, row = out.decode().splitlines()
    assert header.split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert row.split()[:4] == ["web", "5", "5", "5"]
    await cluster.send(c.ScaleReplicaSet(name="web", replicas=2))
    await _replicas(cluster, "web", 2)
    assert (await cluster.state("web-4")).deleted
    # A replica deleted by hand is replaced under the same name.
    await cluster.send(c.DeleteVM(name="web-1"))
    await cluster.until("web-1", lambda s: s.deleted or s.status == "Terminating")
    await _replicas(cluster, "web", 2)
    assert kinds(await cluster.history("web-1")).count("VMCreated") == 2
    await cluster.send(c.DeleteReplicaSet(name="web"))
    for i in range(2):
        await cluster.until(f"web-{i}", lambda s: s.deleted)
    with pytest.raises(Rejected, match="not found"):
        await cluster.send(c.ScaleReplicaSet(name="nope", replicas=1))
    starts = [w for w in node.work if type(w).__name__ == "Start"]
    assert len(starts) == 6  # 3, then 2 more, then web-1's replacement


async def test_volume_admission_waits_for_the_controller_to_fold_the_logs_end(
    tmp_path: Path,
) -> None:
    """Volume commands are judged against the controller's folded state, not a read of the log:
    it is read once the controller has folded every event the log held then, so a node that
    registered just before the command counts."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            await provision(nc.jetstream())
            store = EventStore(nc, source="/tests")
            ctrl = Controller(nc, EventStore(nc, source="/tests/controller"))
            stop = asyncio.Event()
            task = asyncio.create_task(ctrl.run(stop), name="test-controller")
            try:
                for i in range(20):
                    registered = m.NodeRegistered(hypervisor="test", libvirt_uri="test:///default",
                                                  cpus=1, memory_bytes=1 << 30)  # fmt: skip
                    await store.append(Ref.node(f"n{i}"), [registered], expected_version=0)
                    view = await ctrl.volume_view(
                        Ref("volume", "default", "v"), c.CreateVolume(name="v", size="1Gi")
                    )
                    assert f"n{i}" in view.nodes
            finally:
                stop.set()
                await settle("the controller", task)
        finally:
            await nc.close()
