"""VirtualMachinePool (pool.kubevirt.io/v1alpha1): `replicas` VMs named `<pool>-<index>`, scaled
by `scale vmpool` and by a re-apply, listed, described, deleted with its VMs, and its history;
each VM's DataVolumes from the template's `dataVolumeTemplates`."""

from __future__ import annotations

import asyncio

import pytest
from clirun import Result, virtbus
from driverstack import Stack

from bus.client import send
from events.manifest import parse_documents, to_commands
from events.names import Ref
from orchestrator.volumes import fold_volume

POOL = """\
apiVersion: pool.kubevirt.io/v1alpha1
kind: VirtualMachinePool
metadata: {name: web}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {kubevirt.io/vmpool: web}}
  scaleInStrategy: {proactive: {selectionPolicy: {sortPolicy: DescendingOrder}}}
  virtualMachineTemplate:
    metadata: {labels: {app: web}}
    spec:
      runStrategy: Always
      template:
        spec:
          domain: {resources: {requests: {memory: 64Mi}}, devices: {}}
"""


def pool(replicas: int) -> str:
    return POOL.replace("REPLICAS", str(replicas))


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def gone(st: Stack, name: str, *, within: float = 20) -> None:
    for _ in range(int(within / 0.05)):
        if not (await st.state(name)).exists:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{name} still exists")


async def names(st: Stack) -> str:
    got = await cli(st, "get", "vms", "-l", "kubevirt.io/vmpool=web", "-o", "name")
    return got.ok().out


async def test_a_pool_makes_scales_and_deletes_its_vms(stack: Stack) -> None:
    await stack.node("node-a")
    applied = (await cli(stack, "apply", "-f", "-", stdin=pool(2))).ok()
    assert applied.out == "virtualmachinepool.pool.kubevirt.io/web created\n"
    assert applied.err == ""  # its scaleInStrategy is acted on
    for name in ("web-0", "web-1"):
        s = await stack.until(name, "Running")
        labels = dict(s.labels)
        revision = labels.pop("kubevirt.io/vm-pool-revision-name")  # KubeVirt's, per template
        assert (labels, revision[:4]) == ({"app": "web", "kubevirt.io/vmpool": "web"}, "web-")
    both = "virtualmachine.kubevirt.io/web-0\nvirtualmachine.kubevirt.io/web-1\n"
    assert await names(stack) == both

    scaled = (await cli(stack, "scale", "vmpool", "web", "--replicas", "3")).ok()
    assert scaled.out == "virtualmachinepool.pool.kubevirt.io/web scaled\n"
    await stack.until("web-2", "Running")
    assert (await cli(stack, "scale", "vmpool/web", "--replicas", "1")).ok().out == scaled.out
    await gone(stack, "web-2")
    await gone(stack, "web-1")
    assert await names(stack) == "virtualmachine.kubevirt.io/web-0\n"
    # A re-apply scales too (it is the pool's spec); its changed template updates web-0
    # (updateStrategy proactive, KubeVirt's default: the new spec, then a restart).
    again = (await cli(stack, "apply", "-f", "-", stdin=pool(2).replace("64Mi", "72Mi"))).ok()
    assert again.out == "virtualmachinepool.pool.kubevirt.io/web configured\n"
    await stack.until("web-1", "Running")
    for _ in range(400):
        kinds = await stack.kinds("web-0")
        if "VMRestartRequested" in kinds and "DomainStarted" in kinds[kinds.index(
                "VMRestartRequested"):]:  # fmt: skip
            break
        await asyncio.sleep(0.05)
    assert [k for k in kinds if k in ("VMSpecChanged", "VMRestartRequested")] == [
        "VMSpecChanged", "VMRestartRequested"]  # fmt: skip
    s = await stack.until("web-0", "Running")
    assert s.spec["template"]["spec"]["domain"]["resources"] == {"requests": {"memory": "72Mi"}}

    table = (await cli(stack, "get", "vmpool")).ok().out.splitlines()
    assert [row.split()[:4] for row in table] == [
        ["NAME", "DESIRED", "CURRENT", "READY"], ["web", "2", "2", "2"]]  # fmt: skip
    obj = (await cli(stack, "get", "vmpool", "web", "-o", "json")).ok().json()
    assert (obj["apiVersion"], obj["kind"], obj["status"]) == (
        "pool.kubevirt.io/v1beta1",
        "VirtualMachinePool",
        {"replicas": 2, "readyReplicas": 2},
    )
    described = (await cli(stack, "describe", "vmpool", "web")).ok().out.splitlines()
    assert described[4:6] == ["API Version:  pool.kubevirt.io/v1beta1",
                              "Kind:         VirtualMachinePool"]  # fmt: skip

    deleted = (await cli(stack, "delete", "vmpool", "web")).ok().out
    assert deleted == 'virtualmachinepool.pool.kubevirt.io "web" deleted\n'
    await gone(stack, "web-0")
    await gone(stack, "web-1")
    missing = await cli(stack, "scale", "vmpool", "web", "--replicas", "1")
    assert (missing.code, missing.err) == (
        1, 'error: virtualmachinepool.pool.kubevirt.io "web" not found\n')  # fmt: skip

    items = (await cli(stack, "history", "vmpool/web", "-o", "json")).ok().json()["items"]
    decisions = [(i["type"], i["summary"]) for i in items if i["category"] == "Decision"]
    assert [(t.removeprefix("io.virtbus.vmpool."), s.split(", labels")[0]) for t, s in decisions
            if "spec" not in s] == [("scaled.v1", "replicas=3"), ("scaled.v1", "replicas=1"),
                                    ("deleted.v1", "")]  # fmt: skip
    assert [t for t, _ in decisions] == [
        "io.virtbus.vmpool.created.v1", "io.virtbus.vmpool.scaled.v1",
        "io.virtbus.vmpool.scaled.v1", "io.virtbus.vmpool.spec_changed.v1",
        "io.virtbus.vmpool.deleted.v1",
    ]  # fmt: skip
    rejected = [i["summary"] for i in items if i["category"] == "Rejection"]
    assert rejected == [
        "ScaleVMPool " + rejected[0].split()[1] + " rejected: "
        'virtualmachinepool.pool.kubevirt.io "web" not found (field name)'
    ]


DV_POOL = """\
apiVersion: pool.kubevirt.io/v1alpha1
kind: VirtualMachinePool
metadata: {name: db}
spec:
  replicas: REPLICAS
  virtualMachineTemplate:
    spec:
      runStrategy: Always
      dataVolumeTemplates:
      - metadata: {name: data}
        spec: {source: {blank: {}}, storage: {resources: {requests: {storage: 1Mi}}}}
      template:
        spec:
          domain:
            resources: {requests: {memory: 64Mi}}
            devices: {disks: [{name: data, disk: {bus: virtio}}]}
          volumes: [{name: data, dataVolume: {name: data}}]
"""


async def test_a_pools_vms_get_their_own_data_volumes(stack: Stack) -> None:
    """KubeVirt's pool: each VM's dataVolumeTemplates are `<dv>-<index>`, made with it and its
    volumes pointed at them; a VM scaled in takes its DataVolume with it."""
    await stack.node("node-a")
    for replicas in (2, 1):
        [cmd], _ = to_commands(parse_documents(DV_POOL.replace("REPLICAS", str(replicas)))[0])
        await send(stack.nc, cmd)
        if replicas == 2:
            for i in range(2):
                s = await stack.until(f"db-{i}", "Running")
                [volume] = s.spec["template"]["spec"]["volumes"]
                assert volume == {"name": "data", "dataVolume": {"name": f"data-{i}"}}
                v = fold_volume(await stack.store.read(Ref("volume", "default", f"data-{i}")))
                assert (v.exists, v.data_volume, v.owner, v.node) == (True, True, f"db-{i}",
                                                                      "node-a")  # fmt: skip
    await gone(stack, "db-1")
    for _ in range(200):
        if not fold_volume(await stack.store.read(Ref("volume", "default", "data-1"))).exists:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("data-1 outlived its VM")
    assert fold_volume(await stack.store.read(Ref("volume", "default", "data-0"))).exists
