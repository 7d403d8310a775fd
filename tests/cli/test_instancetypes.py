"""Instance types and preferences: applied, listed, deleted; resolved into the spec the scheduler
places and the node starts; a VM naming a missing one refused at start with KubeVirt's words."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml
from clirun import Result, virtbus
from driverstack import Stack

from bus.client import send
from events import commands as c
from events.errors import ValidationError
from events.instancetypes import InstancetypeState, effective_spec
from events.manifest import to_commands


def kind(kind: str, name: str, spec: str) -> str:
    return (f"apiVersion: instancetype.kubevirt.io/v1beta1\nkind: {kind}\n"
            f"metadata: {{name: {name}}}\nspec: {spec}\n")  # fmt: skip


KINDS = "---\n".join([
    kind("VirtualMachineClusterInstancetype", "small", "{cpu: {guest: 2}, memory: {guest: 128Mi}}"),
    kind("VirtualMachineClusterInstancetype", "huge", "{cpu: {guest: 1}, memory: {guest: 64Ti}}"),
    kind("VirtualMachinePreference", "cores",
         "{cpu: {preferredCPUTopology: preferCores}, devices: {preferredDiskBus: sata}}"),
])  # fmt: skip


def vm(name: str, instancetype: str, preference: str = "") -> str:
    pref = f"  preference: {{name: {preference}, kind: VirtualMachinePreference}}\n"
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Halted
  instancetype: {{name: {instancetype}}}
{pref if preference else ""}  template:
    spec:
      domain: {{devices: {{}}}}
"""


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def test_instancetypes_size_the_vm_and_a_missing_one_is_refused_at_start(
    stack: Stack,
) -> None:
    await stack.node("node-a")
    out = (await cli(stack, "apply", "-f", "-", stdin=KINDS)).ok().out
    assert out == (
        "virtualmachineclusterinstancetype.instancetype.kubevirt.io/small created\n"
        "virtualmachineclusterinstancetype.instancetype.kubevirt.io/huge created\n"
        "virtualmachinepreference.instancetype.kubevirt.io/cores created\n"
    )
    again = (await cli(stack, "apply", "-f", "-", stdin=KINDS)).ok().out
    assert again.count(" unchanged\n") == 3
    names = (await cli(stack, "get", "vmcf", "-o", "name")).ok().out
    assert names == (
        "virtualmachineclusterinstancetype.instancetype.kubevirt.io/huge\n"
        "virtualmachineclusterinstancetype.instancetype.kubevirt.io/small\n"
    )
    pref = (await cli(stack, "get", "vmpref", "cores", "-o", "json")).json()
    assert pref["spec"]["cpu"] == {"preferredCPUTopology": "preferCores"}

    for name, itype, pref in (("sized", "small", "cores"), ("giant", "huge", ""),
                              ("lost", "nowhere", "")):  # fmt: skip
        [cmd], _ = to_commands(yaml.safe_load(vm(name, itype, pref)))
        await send(stack.nc, cmd)
    await send(stack.nc, c.StartVM(name="sized"))
    assert (await stack.until("sized", "Running")).node == "node-a"
    # The scheduler reserves what the instance type asks, not a default.
    await send(stack.nc, c.StartVM(name="giant"))
    s = await stack.until("giant", "ErrorUnschedulable")
    assert s.reason == "0/1 nodes are available: 1 Insufficient memory."

    refused = await cli(stack, "start", "lost")
    assert (refused.code, refused.err) == (
        1, 'error: Failure to find instancetype: virtualmachineclusterinstancetypes.'
           'instancetype.kubevirt.io "nowhere" not found\n',
    )  # fmt: skip
    deleted = (await cli(stack, "delete", "vmcf", "huge")).ok().out
    assert deleted == 'virtualmachineclusterinstancetype.instancetype.kubevirt.io "huge" deleted\n'
    gone = await cli(stack, "delete", "vmcf", "huge")
    assert gone.err == (
        'error: virtualmachineclusterinstancetypes.instancetype.kubevirt.io "huge" not found\n'
    )


def test_the_effective_spec_takes_the_instance_type_and_fills_in_the_preference() -> None:
    known = {
        ("clusterinstancetype", "_", "small"): {"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}},
        ("preference", "ns", "p"): {"cpu": {"preferredCPUTopology": "preferCores"},
                                    "devices": {"preferredDiskBus": "sata",
                                                "preferredInterfaceModel": "e1000"}},
    }  # fmt: skip

    def lookup(aggregate: str, ns: str, name: str) -> InstancetypeState | None:
        spec = known.get((aggregate, ns, name))
        return None if spec is None else InstancetypeState(exists=True, spec=spec)

    disks: list[dict[str, Any]] = [{"name": "a"}, {"name": "b", "disk": {"bus": "virtio"}},
                                   {"name": "c", "cdrom": {}}]  # fmt: skip
    devices = {"disks": disks, "interfaces": [{"name": "n"}]}
    spec = {"instancetype": {"name": "small"},
            "preference": {"name": "p", "kind": "VirtualMachinePreference"},
            "template": {"spec": {"domain": {"devices": devices}}}}  # fmt: skip
    domain = effective_spec(spec, namespace="ns", lookup=lookup)["template"]["spec"]["domain"]
    assert domain["cpu"] == {"sockets": 1, "cores": 2, "threads": 1}
    assert domain["memory"] == {"guest": "1Gi"}
    assert domain["devices"]["disks"] == [
        {"name": "a", "disk": {"bus": "sata"}}, {"name": "b", "disk": {"bus": "virtio"}},
        {"name": "c", "cdrom": {}},
    ]  # fmt: skip
    assert domain["devices"]["interfaces"] == [{"name": "n", "model": "e1000"}]
    assert spec["template"]["spec"]["domain"]["devices"]["disks"][0] == {"name": "a"}  # a copy

    spec["template"]["spec"]["domain"]["cpu"] = {"cores": 4}
    with pytest.raises(ValidationError) as err:
        effective_spec(spec, namespace="ns", lookup=lookup)
    assert err.value.message == ("VM field(s) spec.template.spec.domain.cpu.cores conflicts with "
                                 "selected instance type")  # fmt: skip
    with pytest.raises(ValidationError) as err:
        effective_spec({"preference": {"name": "q"}}, namespace="ns", lookup=lookup)
    assert err.value.message == ('Failure to find preference: virtualmachineclusterpreferences.'
                                 'instancetype.kubevirt.io "q" not found')  # fmt: skip


async def submit(st: Stack, manifest: str) -> None:
    for doc in yaml.safe_load_all(manifest):
        for cmd in to_commands(doc)[0]:
            await send(st.nc, cmd)


async def test_a_vm_keeps_the_instance_type_it_captured_until_it_names_another(
    stack: Stack,
) -> None:
    """KubeVirt's ControllerRevisions: a changed or deleted instance type does not alter a VM
    that captured it; naming another captures that one (and, running, plugs its CPUs live)."""
    await stack.node("node-a")
    await submit(stack, KINDS)
    await submit(stack, vm("kept", "small"))
    for _ in range(200):
        if "InstancetypeRevisionCaptured" in await stack.kinds("kept"):
            break
        await asyncio.sleep(0.05)
    got = (await cli(stack, "get", "vm", "kept", "-o", "json")).json()
    assert got["status"]["instancetypeRef"] == {
        "name": "small", "kind": "VirtualMachineClusterInstancetype",
        "controllerRevisionRef": {"name": "kept-small-v1beta1-1"}}  # fmt: skip
    # The user guide looks the revision up as a ControllerRevision: the object as captured.
    table = (await cli(stack, "get", "controllerrevisions")).ok().out.splitlines()
    assert [row.split()[:3] for row in table] == [
        ["NAME", "CONTROLLER", "REVISION"],
        ["kept-small-v1beta1-1", "virtualmachine.kubevirt.io/kept", "1"]]  # fmt: skip
    rev = (await cli(stack, "get", "controllerrevision/kept-small-v1beta1-1", "-o", "json")).json()
    assert (rev["kind"], rev["metadata"]["ownerReferences"][0]["name"], rev["data"]) == (
        "ControllerRevision", "kept", {
            "apiVersion": "instancetype.kubevirt.io/v1beta1",
            "kind": "VirtualMachineClusterInstancetype", "metadata": {"name": "small"},
            "spec": {"cpu": {"guest": 2}, "memory": {"guest": "128Mi"}}})  # fmt: skip
    gone = await cli(stack, "delete", "controllerrevision", "kept-small-v1beta1-1")
    assert (gone.code, gone.err) == (1, "error: deleting controllerrevisions.apps is not "
                                        "supported by virtbus: a VM's captured instance type or "
                                        "preference goes with its VM\n")  # fmt: skip
    await submit(stack, kind("VirtualMachineClusterInstancetype", "small",
                             "{cpu: {guest: 4}, memory: {guest: 256Mi}}"))  # fmt: skip
    await send(stack.nc, c.DeleteClusterInstancetype(name="small"))
    await send(stack.nc, c.StartVM(name="kept"))  # the object is gone: the capture starts it
    s = await stack.until("kept", "Running")
    assert s.size is not None and (s.size.sockets, s.size.guest) == (2, 128 << 20)

    await submit(stack, kind("VirtualMachineClusterInstancetype", "medium",
                             "{cpu: {guest: 3}, memory: {guest: 128Mi}}"))  # fmt: skip
    await submit(stack, vm("kept", "medium").replace("Halted", "Always"))
    for _ in range(200):
        if (s := await stack.state("kept")).sockets_now == 3:
            break
        await asyncio.sleep(0.05)
    kinds = await stack.kinds("kept")
    assert [k for k in kinds if k.startswith(("Instancetype", "Hot"))] == [
        "InstancetypeRevisionCaptured", "InstancetypeRevisionCaptured",
        "HotVCPUChangeRequested", "HotVCPUChanged"]  # fmt: skip
    assert (s.revisions["instancetype"].revision, s.restart_required) == (
        "kept-medium-v1beta1-1", False)  # fmt: skip
