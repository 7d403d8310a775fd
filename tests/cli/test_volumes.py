"""Volumes (virtbus's PVCs) end to end: the CLI as a subprocess, the orchestrator in-process, node
workers on libvirt's test driver. Assertions read what a user sees: CLI output and exit codes, the
event log, and the files on the node.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirun import Result, virtbus
from driverstack import Stack, pvc_vm
from paths import SEED

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from events.errors import ValidationError
from events.names import Ref

GiB = 1 << 30


async def cli(st: Stack, *args: str) -> Result:
    return await virtbus(*args, "--server", st.url)


def rejected(result: Result, *words: str) -> None:
    assert result.code == 1, f"exit {result.code}: {result.out} {result.err}"
    assert result.out == ""
    for w in words:
        assert w in result.err, result.err


async def until(cond: Any, what: str, *, within: float = 15) -> None:
    for _ in range(int(within / 0.05)):
        if await cond() if asyncio.iscoroutinefunction(cond) else cond():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {within}s: {what}")


async def test_volume_create_get_delete(stack: Stack) -> None:
    await stack.node("node-a")
    await stack.node("node-b")
    out = (await cli(stack, "volume", "create", "data", "--size", "1Gi", "--node", "node-b")).ok()
    assert out.out.strip() == "persistentvolumeclaim/data created"
    disk = stack.node_dir("node-b") / "volumes" / "default" / "data" / "disk.img"
    assert disk.stat().st_size == GiB
    assert disk.stat().st_blocks * 512 < 1 << 20  # sparse: nothing written yet
    assert not (stack.node_dir("node-a") / "volumes" / "default" / "data").exists()

    obj = (await cli(stack, "volume", "get", "data", "-o", "json")).json()
    assert obj["kind"] == "PersistentVolumeClaim" and obj["apiVersion"] == "v1"
    assert obj["status"] == {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                             "capacity": {"storage": "1Gi"}}  # fmt: skip
    assert obj["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert obj["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node-b"

    # Without --node it waits for its first consumer (WaitForFirstConsumer): no node, Pending.
    (await cli(stack, "volume", "create", "other", "--size", "100Mi")).ok()
    listing = yaml.safe_load((await cli(stack, "volume", "get", "-o", "yaml")).ok().out)
    assert listing["kind"] == "List"
    node_of = {i["metadata"]["name"]: i["metadata"]["annotations"] for i in listing["items"]}
    assert node_of == {"data": {"volume.kubernetes.io/selected-node": "node-b"}, "other": {}}
    table = (await cli(stack, "volume", "get")).ok().out.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "CAPACITY", "NODE", "AGE"]
    assert [r.split()[:4] for r in table[1:]] == [
        ["data", "Bound", "1Gi", "node-b"], ["other", "Pending", "100Mi", "<none>"],
    ]  # fmt: skip

    assert (await cli(stack, "get", "pvc")).ok().out.splitlines()[0] == table[0]  # kubectl's way
    deleted = (await cli(stack, "volume", "delete", "data")).ok()
    assert deleted.out.strip() == 'persistentvolumeclaim "data" deleted'
    await until(lambda: not disk.parent.exists(), "the node removes the volume's directory")
    rejected(await cli(stack, "volume", "get", "data"), 'persistentvolumeclaims "data" not found')
    types = [r.envelope.type for r in await stack.store.read(Ref("volume", "default", "data"))]
    assert types == ["io.virtbus.volume.created.v1", "io.virtbus.volume.ready.v1",
                     "io.virtbus.volume.deleted.v1"]  # fmt: skip

    # The name is free again, and the new volume is whole (not the old directory's leftovers).
    (await cli(stack, "volume", "create", "data", "--size", "2Mi", "--node", "node-b")).ok()
    assert disk.stat().st_size == 2 << 20


async def test_bad_volume_commands_are_rejected_and_recorded(stack: Stack) -> None:
    await stack.node("node-a")
    cases = [
        (("create", "Bad_Name", "--size", "1Gi"), "DNS-1123"),
        (("create", "v1", "--size", "lots"), "size: 'lots' is not a quantity"),
        (("create", "v1", "--size", "1k"), "below the minimum volume size"),
        (("create", "v1", "--size", "1Gi", "--node", "nowhere"), 'nodes "nowhere" not found'),
        (("delete", "nothing"), 'persistentvolumeclaims "nothing" not found'),
    ]
    for args, reason in cases:
        rejected(await cli(stack, "volume", *args), reason)
    (await cli(stack, "volume", "create", "v1", "--size", "1Mi")).ok()
    rejected(await cli(stack, "volume", "create", "v1", "--size", "1Mi"),
             'persistentvolumeclaims "v1" already exists')  # fmt: skip
    usage = await cli(stack, "volume", "get", "-o", "wide")
    assert (usage.code, usage.err) == (2, "error: -o 'wide': use json or yaml\n")
    # Each rejection is on the volume's own history, naming the field.
    history = await stack.store.read(Ref("volume", "default", "v1"))
    rejections = [r.envelope.data for r in history if isinstance(r.envelope.data,
                                                                  m.CommandRejected)]  # fmt: skip
    assert [(e.command, e.field) for e in rejections] == [
        ("CreateVolume", "size"), ("CreateVolume", "size"), ("CreateVolume", "node"),
        ("CreateVolume", "name"),
    ]  # fmt: skip
    # A bare NATS client skipping the CLI is judged the same way.
    with pytest.raises(Rejected, match="source: 'ftp://x'"):
        await send(stack.nc, c.CreateVolume(name="v2", size="1Gi", source="ftp://x"))


async def test_a_vm_runs_where_its_volume_is_and_deleting_it_keeps_the_volume(
    stack: Stack,
) -> None:
    await stack.node("node-a")
    await stack.node("node-b")
    await send(stack.nc, c.CreateVolume(name="root", size="64Mi", node="node-b"))
    disk = stack.node_dir("node-b") / "volumes" / "default" / "root" / "disk.img"
    await until(disk.exists, "the volume is made on node-b")
    await send(stack.nc, pvc_vm("pinned", "root"))
    await send(stack.nc, c.StartVM(name="pinned"))
    s = await stack.until("pinned", "Running")
    assert s.node == "node-b"  # node-a would win on name alone: the volume placed it

    result = await cli(stack, "volume", "delete", "root")
    rejected(result, 'persistentvolumeclaims "root" is in use by virtualmachine "pinned"')
    await send(stack.nc, c.DeleteVM(name="pinned"))
    await stack.until("pinned", "Deleted")
    assert disk.exists()
    obj = (await cli(stack, "volume", "get", "root", "-o", "json")).json()
    assert obj["status"]["phase"] == "Bound"

    # A VM naming a claim that is not there: KubeVirt's status, no node placement constraint.
    await send(stack.nc, pvc_vm("orphan", "missing"))
    await send(stack.nc, c.StartVM(name="orphan"))
    failed: list[m.VMStartFailed] = []
    for _ in range(200):
        history = [r.envelope.data for r in await stack.store.read(Ref.vm("orphan"))]
        if failed := [e for e in history if isinstance(e, m.VMStartFailed)]:
            break
        await asyncio.sleep(0.05)
    assert failed[0].status == "ErrorPvcNotFound"
    assert 'persistentvolumeclaim "missing" not found' in failed[0].reason

    # Two claims on two nodes: no node can run the VM, said the scheduler's way.
    await send(stack.nc, c.CreateVolume(name="elsewhere", size="1Mi", node="node-a"))
    await send(stack.nc, pvc_vm("split", "root", also=("elsewhere",)))
    await send(stack.nc, c.StartVM(name="split"))
    s = await stack.until("split", "ErrorUnschedulable")
    assert "2 node(s) had volume node affinity conflict" in s.reason


async def test_volume_get_json_lists_all_namespaces(stack: Stack) -> None:
    await stack.node("node-a")
    await send(stack.nc, c.CreateVolume(name="a", namespace="team", size="1Mi"))
    await send(stack.nc, c.CreateVolume(name="b", size="1Mi"))
    out = (await cli(stack, "volume", "get", "-A", "-o", "json")).json()
    assert sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in out["items"]) == [
        ("default", "b"), ("team", "a"),
    ]  # fmt: skip
    text = (await cli(stack, "volume", "get", "-n", "team")).ok().out
    assert text.split("\n")[1].split()[:2] == ["a", "Pending"] or "Bound" in text
    assert (
        json.loads((await cli(stack, "volume", "get", "-n", "empty", "-o", "json")).ok().out)[
            "items"
        ]
        == []
    )
    assert (
        (await cli(stack, "volume", "get", "-n", "empty"))
        .ok()
        .out.startswith("No resources found in empty namespace.")
    )


def test_claim_paths_match_the_worker(tmp_path: Path) -> None:
    from workers.volumes import claim_dir

    assert claim_dir(tmp_path, "ns", "c") == tmp_path / "volumes" / "ns" / "c"


async def test_a_relative_data_dir_resolves_to_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`virtbus up --data-dir .virtbus` gives its nodes a relative dir: libvirt and the qcow2
    overlay of a containerDisk (read relative to the overlay's own dir) need absolute paths."""
    import subprocess

    from workers.imagecache import ImageCache
    from workers.registry import Registries
    from workers.volumes import Volumes, claim_dir, image_dir

    monkeypatch.chdir(tmp_path)
    node = Path(".virtbus/nodes/node-a")
    (image := image_dir(node, "kubevirt/virtio-container-disk")).mkdir(parents=True)
    (image / "disk.img").write_bytes(b"\0" * 65536)
    (claim := claim_dir(node, "default", "iso-centos7")).mkdir(parents=True)
    (claim / "disk.img").write_bytes(b"\0" * 65536)
    spec = yaml.safe_load(SEED.read_text())["spec"]
    # The image cache as the worker builds it: from the same relative dir.
    images = ImageCache(node, Registries([]), node="node-a")
    got = await Volumes(node, host_root=node / "host", images=images).resolve(
        spec, namespace="default", name="centos7", uid="u1"
    )
    assert {v.path for v in got.values()} == {
        str(tmp_path / claim / "disk.img"),
        str(tmp_path / node / "host/data/disk.img"),
        str(tmp_path / node / "vms/default/centos7/virtiocontainerdisk.qcow2"),
    }
    info = await asyncio.to_thread(subprocess.run, ["qemu-img", "info", "--output=json",
                                   got["virtiocontainerdisk"].path], check=True,
                                   capture_output=True)  # fmt: skip
    backing = json.loads(info.stdout)["full-backing-filename"]
    assert backing == str(tmp_path / image / "disk.img")


def test_the_volume_fold_and_the_placement_of_new_volumes() -> None:
    from datetime import UTC, datetime, timedelta

    from events import work as w
    from events.envelope import Envelope
    from events.nodes import READY, NodeState
    from events.volumes import VolumeState, apply_volume, retry_delay
    from orchestrator.volumes import ClusterView, decide_volume, volume_work

    now = datetime.now(UTC)

    def env(e: m.Event, version: int) -> Envelope:
        return Envelope(id=str(version), source="/t", type="t", subject="volume/default/v",
                        time=datetime.now(UTC), version=version, data=e)  # type: ignore[arg-type]  # fmt: skip

    s = apply_volume(
        VolumeState(), env(m.VolumeCreated(size_bytes=5, node="n1", source="upload"), 1)
    )
    assert (s.exists, s.phase, s.node, s.created_version) == (True, "Pending", "n1", 1)
    [work] = volume_work(s, now=now)
    assert work.subject == "virt.work.n1.volume.default.v" and work.msg_id.endswith(":1")
    s = apply_volume(s, env(m.VolumeFailed(reason="bad image"), 2))
    assert (s.phase, s.reason, volume_work(s, now=now)) == ("Failed", "bad image", [])
    s = apply_volume(s, env(m.VolumeDeleted(), 3))
    assert not s.exists and [type(w).__name__ for w in volume_work(s, now=now)] == ["RemoveVolume"]
    s = apply_volume(s, env(m.VolumeCreated(size_bytes=7, node="n2"), 4))
    assert (s.phase, s.node, s.reason, s.created_version) == ("Pending", "n2", "", 4)
    assert apply_volume(s, env(m.VolumeReady(), 5)).phase == "Bound"

    # A DataVolume's fill that failed goes again after CrashLoopBackOff's back-off, as its own
    # work (a message id of its own), and the node takes only the latest try's.
    imported = m.VolumeCreated(size_bytes=5, node="n1", source="import:http://x/d.img")
    s = apply_volume(VolumeState(), env(imported, 1))
    failed = env(m.VolumePopulationFailed(reason="404"), 2)
    s = apply_volume(s, failed)
    assert (s.phase, s.restarts, s.reason) == ("Pending", 1, "404")
    assert s.retry_at == failed.time + timedelta(seconds=10)
    assert volume_work(s, now=failed.time + timedelta(seconds=9)) == []
    [again] = volume_work(s, now=failed.time + timedelta(seconds=10))
    assert isinstance(again, w.ProvisionVolume) and again.attempt == 1
    assert again.msg_id == f"{work.msg_id.rsplit(':', 1)[0]}:1:1"
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 5, 6, 9)] == [
        10, 20, 40, 160, 300, 300]  # fmt: skip

    nodes = {
        "a": NodeState(name="a", status=READY),
        "b": NodeState(name="b", status=READY),
        "c": NodeState(name="c", status=READY, cordoned=True),
    }
    view = ClusterView(nodes=nodes, volumes_per_node={"a": 3, "b": 1})
    # An upload's claim is placed at once (the upload is its first consumer), on the node with
    # the fewest volumes; a blank one without --node waits for its first VM (node "").
    up = c.CreateVolume(name="v", size="1Gi", source="upload")
    [created] = decide_volume(VolumeState(), up, view)
    assert isinstance(created, m.VolumeCreated) and (created.node, created.size_bytes) == ("b", GiB)
    [late] = decide_volume(VolumeState(), c.CreateVolume(name="v", size="1Gi"), view)
    assert isinstance(late, m.VolumeCreated) and late.node == ""
    assert volume_work(apply_volume(VolumeState(), env(late, 1)), now=now) == []
    with pytest.raises(ValidationError, match='node: node "c" is cordoned; it takes no new'):
        decide_volume(VolumeState(), c.CreateVolume(name="v", size="1Gi", node="c"), view)
    with pytest.raises(ValidationError, match="no ready node can hold the volume"):
        decide_volume(VolumeState(), up, ClusterView())


def test_volume_admission_reads_the_controllers_folded_state() -> None:
    """What a volume command is judged against, read off the controller's maps (keyed by subject
    prefix): nodes and counts to place a create or a move; the claim's users, in its namespace
    only, to refuse a delete or a move."""
    from events.nodes import READY, NodeState
    from events.state import RUNNING, VMState
    from events.volumes import VolumeState
    from orchestrator.volumes import ClusterView, cluster_view

    spec = pvc_vm("x", "data").spec
    vms = {
        "virt.vm.default.up": VMState(namespace="default", name="up", exists=True, spec=spec,
                                      phase=RUNNING, node="a"),
        "virt.vm.default.down": VMState(namespace="default", name="down", exists=True, spec=spec),
        "virt.vm.default.gone": VMState(namespace="default", name="gone", spec=spec),
        "virt.vm.other.far": VMState(namespace="other", name="far", exists=True, spec=spec),
    }  # fmt: skip
    nodes = {"a": NodeState(name="a", status=READY), "b": NodeState(name="b", status=READY)}
    volumes = {
        "virt.volume.default.data": VolumeState(exists=True, node="a"),
        "virt.volume.default.old": VolumeState(node="b"),
    }
    ref = Ref("volume", "default", "data")

    def view(cmd: c.Command) -> ClusterView:
        return cluster_view(ref, cmd, nodes=nodes, volumes=volumes, vms=vms)

    assert view(c.CreateVolume(name="data", size="1Gi")) == ClusterView(
        nodes=nodes, volumes_per_node={"a": 1}
    )
    assert view(c.DeleteVolume(name="data")) == ClusterView(users=["down", "up"], running=["up"])
    moved = view(c.MoveVolume(name="data", node="b"))
    assert (moved.nodes, moved.users, moved.running) == (nodes, ["down", "up"], ["up"])


async def test_moving_a_volume_copies_its_data_and_its_stopped_vm_follows(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.node("node-a")
    await stack.node("node-b")
    image = tmp_path / "data.img"
    data = b"virtbus!" * (1 << 17)  # 1 MiB of data, then a hole to 64 MiB
    image.write_bytes(data)
    (await cli(stack, "image-upload", "--image-path", str(image), "--pvc-name", "root",
               "--pvc-size", "64Mi", "--node", "node-a")).ok()  # fmt: skip
    old = stack.node_dir("node-a") / "volumes" / "default" / "root" / "disk.img"
    new = stack.node_dir("node-b") / "volumes" / "default" / "root" / "disk.img"
    await send(stack.nc, pvc_vm("follower", "root"))
    await send(stack.nc, c.StartVM(name="follower"))
    assert (await stack.until("follower", "Running")).node == "node-a"

    rejected(await cli(stack, "volume", "move", "root", "--to", "node-b"),
             'persistentvolumeclaims "root" is in use by running virtualmachine "follower"; '
             "stop it first")  # fmt: skip
    await send(stack.nc, c.StopVM(name="follower"))
    await stack.until("follower", "Stopped")
    rejected(await cli(stack, "volume", "move", "root", "--to", "node-a"), "is on node-a already")
    rejected(
        await cli(stack, "volume", "move", "root", "--to", "node-z"), 'nodes "node-z" not found'
    )

    out = (await cli(stack, "volume", "move", "root", "--to", "node-b")).ok().out
    assert out == "persistentvolumeclaim/root moved to node-b\n"
    got = new.read_bytes()
    assert len(got) == 64 << 20 and got[: len(data)] == data and not got[len(data) :].strip(b"\0")
    assert new.stat().st_blocks * 512 < 8 << 20  # the hole stayed a hole
    await until(lambda: not old.parent.exists(), "the old node drops its copy")
    obj = (await cli(stack, "volume", "get", "root", "-o", "json")).json()
    assert obj["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node-b"
    types = [r.envelope.type for r in await stack.store.read(Ref("volume", "default", "root"))]
    assert types[-2:] == ["io.virtbus.volume.move_requested.v1", "io.virtbus.volume.moved.v1"]

    await send(stack.nc, c.StartVM(name="follower"))
    assert (await stack.until("follower", "Running")).node == "node-b"  # it followed its disk


async def test_a_failed_move_leaves_the_volume_where_it_was(stack: Stack) -> None:
    await stack.node("node-a")
    await stack.node("node-b")
    (await cli(stack, "volume", "create", "lost", "--size", "4Mi", "--node", "node-a")).ok()
    (stack.node_dir("node-a") / "volumes" / "default" / "lost" / "disk.img").unlink()
    result = await cli(stack, "volume", "move", "lost", "--to", "node-b")
    rejected(result, 'persistentvolumeclaims "lost" stays on node-a: move failed: volume-read:',
             "No such file or directory")  # fmt: skip
    obj = (await cli(stack, "volume", "get", "lost", "-o", "json")).json()
    assert obj["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node-a"
    assert obj["status"]["message"].startswith("move failed: volume-read:")
    assert not (stack.node_dir("node-b") / "volumes" / "default" / "lost").exists()


async def test_migrating_a_stopped_vm_moves_its_volumes_with_it(
    stack: Stack, tmp_path: Path
) -> None:
    """The issue's cold migration: definition and disks move to the target node together."""
    await stack.node("node-a")
    await stack.node("node-b")
    image = tmp_path / "data.img"
    image.write_bytes(b"cold-mv!" * 4096)
    (await cli(stack, "image-upload", "--image-path", str(image), "--pvc-name", "disk",
               "--pvc-size", "1Mi", "--node", "node-a")).ok()  # fmt: skip
    await send(stack.nc, pvc_vm("mover", "disk"))
    await send(stack.nc, c.MigrateVM(name="mover", target_node="node-b"))
    assert (await stack.state("mover")).home == "node-b"
    new = stack.node_dir("node-b") / "volumes" / "default" / "disk" / "disk.img"
    await until(new.is_file, "the volume's data reaches node-b", within=30)
    assert new.read_bytes()[:8] == b"cold-mv!"
    history = [r.envelope for r in await stack.store.read(Ref("volume", "default", "disk"))]
    requested = [e for e in history if isinstance(e.data, m.VolumeMoveRequested)]
    assert [e.data.node for e in requested] == ["node-b"]  # type: ignore[attr-defined]
    assert requested[0].causationid  # caused by the VM's migration, on its behalf
    await send(stack.nc, c.StartVM(name="mover"))
    assert (await stack.until("mover", "Running")).node == "node-b"
