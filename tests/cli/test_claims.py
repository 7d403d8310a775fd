"""Claims the KubeVirt way: `kind: PersistentVolumeClaim` through apply/get/describe/delete, and
WaitForFirstConsumer placement (a VM's claims end up on the node the VM is scheduled on).

The CLI runs as a subprocess against the in-process orchestrator and test-driver nodes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from clirun import Result, virtbus
from driverstack import Stack, pvc_vm

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref
from events.volumes import VolumeState
from orchestrator.scheduler import Request
from orchestrator.volumes import assume, pin

PVC = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local
  resources:
    requests:
      storage: {size}
"""


async def cli(st: Stack, *args: str) -> Result:
    return await virtbus(*args, "--server", st.url)


async def test_a_pvc_manifest_applies_lists_describes_and_deletes(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.node("node-a")
    path = tmp_path / "pvc.yaml"
    path.write_text(PVC.format(name="disk", size="64Mi"))
    assert (await cli(stack, "apply", "-f", str(path))).ok().out == (
        "persistentvolumeclaim/disk created\n"
    )
    assert (await cli(stack, "apply", "-f", str(path))).ok().out == (
        "persistentvolumeclaim/disk unchanged\n"
    )
    created = await cli(stack, "create", "-f", str(path))
    assert (created.code, created.err) == (1, 'Error from server (AlreadyExists): error when '
                                              f'creating "{path}": persistentvolumeclaims "disk" '
                                              "already exists\n")  # fmt: skip
    # Pending the Kubernetes way: WaitForFirstConsumer, no node until a VM uses it.
    obj = (await cli(stack, "get", "pvc", "disk", "-o", "json")).json()
    assert obj["status"] == {"phase": "Pending"}
    assert obj["spec"] == {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                           "resources": {"requests": {"storage": "64Mi"}},
                           "storageClassName": "local"}  # fmt: skip
    assert obj["metadata"]["annotations"] == {}
    described = (await cli(stack, "describe", "pvc", "disk")).ok().out
    assert "Pending" in described and "disk" in described

    path.write_text(PVC.format(name="disk", size="128Mi"))
    resized = await cli(stack, "apply", "-f", str(path))
    assert (resized.code, resized.err) == (1, 'error: disk: persistentvolumeclaims "disk" is '
                                              "forbidden: spec.resources.requests.storage: "
                                              "virtbus does not resize claims\n")  # fmt: skip
    assert (await cli(stack, "delete", "-f", str(path))).ok().out == (
        'persistentvolumeclaim "disk" deleted\n'
    )
    gone = await cli(stack, "get", "pvc", "disk")
    assert (gone.code, gone.err) == (1, 'error: persistentvolumeclaims "disk" not found\n')


async def test_v1_kinds_other_than_a_claim_are_refused_with_a_true_hint(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    result = await cli(stack, "apply", "-f", str(path))
    assert (result.code, result.err) == (1, "error: kind: 'ConfigMap' is not supported in "
                                            "apiVersion v1; virtbus serves PersistentVolumeClaim "
                                            "there\n")  # fmt: skip
    path.write_text(
        PVC.format(name="x", size="1Gi").replace("accessModes: [ReadWriteOnce]\n  ", "")
    )
    result = await cli(stack, "apply", "-f", str(path))
    assert (result.code, result.err) == (1, "error: spec.accessModes: Required value: at least 1 "
                                            "access mode is required\n")  # fmt: skip


async def test_two_claims_made_apart_bind_where_their_first_vm_is_scheduled(
    stack: Stack, tmp_path: Path
) -> None:
    """The issue's case: two claims made one after the other used to land on two nodes and
    leave their VM ErrorUnschedulable forever."""
    await stack.node("node-a")
    await stack.node("node-b")
    for name in ("one", "two"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(PVC.format(name=name, size="8Mi"))
        (await cli(stack, "apply", "-f", str(path))).ok()
    await send(stack.nc, pvc_vm("both", "one", also=("two",)))
    await send(stack.nc, c.StartVM(name="both"))
    s = await stack.until("both", "Running")
    for name in ("one", "two"):
        history = [r.envelope.data for r in await stack.store.read(Ref("volume", "default", name))]
        assert [type(e).__name__ for e in history] == [
            "VolumeCreated", "VolumeNodeSelected", "VolumeReady",
        ]  # fmt: skip
        assert history[1] == m.VolumeNodeSelected(node=s.node, consumer="both")
        disk = stack.node_dir(s.node) / "volumes" / "default" / name / "disk.img"
        assert disk.stat().st_size == 8 << 20
    table = (await cli(stack, "get", "pvc")).ok().out.splitlines()
    assert [r.split()[:4] for r in table[1:]] == [
        ["one", "Bound", "8Mi", s.node], ["two", "Bound", "8Mi", s.node],
    ]  # fmt: skip

    # A bound claim pins the next VM to its node; its other, new claim follows it there.
    await send(stack.nc, c.StopVM(name="both"))
    await stack.until("both", "Stopped")
    (tmp_path / "three.yaml").write_text(PVC.format(name="three", size="8Mi"))
    (await cli(stack, "apply", "-f", str(tmp_path / "three.yaml"))).ok()
    await send(stack.nc, pvc_vm("next", "one", also=("three",)))
    await send(stack.nc, c.StartVM(name="next"))
    assert (await stack.until("next", "Running")).node == s.node

    # A claim hotplugged into the running VM binds to its node too, before the attach is tried
    # (the test driver has no device attach: the attempt fails, after the claim was made there).
    (tmp_path / "four.yaml").write_text(PVC.format(name="four", size="8Mi"))
    (await cli(stack, "apply", "-f", str(tmp_path / "four.yaml"))).ok()
    claim = {"name": "four", "persistentVolumeClaim": {"claimName": "four"}}
    await send(stack.nc, c.AddVolume(name="next", volume=claim))
    failed = await until_event(stack, "next", m.VolumeAttachFailed)
    four = [r.envelope.data for r in await stack.store.read(Ref("volume", "default", "four"))]
    assert [type(e).__name__ for e in four] == ["VolumeCreated", "VolumeNodeSelected",
                                                "VolumeReady"]  # fmt: skip
    assert four[1] == m.VolumeNodeSelected(node=s.node, consumer="next")
    assert "not found" not in failed.reason


async def until_event(st: Stack, vm: str, kind: type[m.VolumeAttachFailed]) -> m.VolumeAttachFailed:
    for _ in range(400):
        found = [r.envelope.data for r in await st.store.read(Ref.vm(vm))]
        if hits := [e for e in found if isinstance(e, kind)]:
            return hits[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind.__name__} for {vm}")


async def test_two_vms_started_at_once_on_one_unbound_claim_go_where_it_is_bound(
    stack: Stack, tmp_path: Path
) -> None:
    """Both land where the claim is bound, whichever order the controller's reactions take
    (the placement made before the first binding is folded: `test_an_unbound_claim_...` below)."""
    await stack.node("node-a")
    await stack.node("node-b")
    (tmp_path / "shared.yaml").write_text(PVC.format(name="shared", size="8Mi"))
    (await cli(stack, "apply", "-f", str(tmp_path / "shared.yaml"))).ok()
    # (runStrategy Always: each applied VM is placed at once, both in the controller's batch)
    await asyncio.gather(*(send(stack.nc, pvc_vm(n, "shared", runStrategy="Always"))
                           for n in ("first", "second")))  # fmt: skip
    first, second = [await stack.until(n, "Running") for n in ("first", "second")]
    history = [r.envelope.data for r in await stack.store.read(Ref("volume", "default", "shared"))]
    assert [type(e).__name__ for e in history] == [
        "VolumeCreated", "VolumeNodeSelected", "VolumeReady",
    ]  # fmt: skip
    bound = history[1]
    assert isinstance(bound, m.VolumeNodeSelected)
    assert (first.node, second.node) == (bound.node, bound.node)


def test_an_unbound_claim_assumed_by_a_placement_pins_the_next_one_to_its_node() -> None:
    """The scheduler's assume cache, pure: a VM placed on node-b notes its unbound claim as going
    there; a second VM using it, placed before the binding is folded, may go only there (it used
    to take the emptier node and fail there with ErrorPvcNotFound). A bound claim needs no note."""
    unbound = VolumeState(exists=True, name="shared", namespace="default", phase="Pending")
    bound = VolumeState(exists=True, name="kept", namespace="default", node="node-a")
    volumes = {"virt.volume.default.shared": unbound, "virt.volume.default.kept": bound}
    spec = pvc_vm("x", "shared", also=("kept",)).spec
    assumed: dict[str, str] = {}
    free = Request(cpus=1, memory_bytes=1 << 26)
    assert pin(free, spec, volumes, namespace="default", assumed=assumed).nodes == {"node-a"}
    only_shared = pvc_vm("y", "shared").spec
    assert pin(free, only_shared, volumes, namespace="default", assumed=assumed) == free
    noted = assume(only_shared, volumes, namespace="default", node="node-b", assumed=assumed)
    assert (noted, assumed) == (["virt.volume.default.shared"],
                                {"virt.volume.default.shared": "node-b"})  # fmt: skip
    assert pin(free, only_shared, volumes, namespace="default", assumed=assumed).nodes == {
        "node-b"}  # fmt: skip
    again = assume(only_shared, volumes, namespace="default", node="node-a", assumed=assumed)
    assert (again, assumed["virt.volume.default.shared"]) == ([], "node-b")  # the first holds
