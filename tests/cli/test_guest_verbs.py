"""virtctl's guest verbs as the user guide types them: `create vm` (piped into `apply -f -`),
`reset`, `vnc screenshot`, `memory-dump`, `expose`. The CLI is a subprocess against an
in-process orchestrator and one test-driver node; every wait follows the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from clirun import Result, virtbus
from driverstack import Stack

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from events import render
from events.errors import ValidationError
from events.names import Ref
from virtctl.createvm import VMSpecFlags, generate
from workers.screens import PNG_MAGIC


@pytest.fixture
async def gstack(stack: Stack) -> Stack:
    await stack.node("node-a")
    return stack


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def events_of(st: Stack, name: str) -> list[m.Event]:
    return [r.envelope.data for r in await st.store.read(Ref.vm(name))]


async def test_create_vm_reset_screenshot_memory_dump_and_expose(
    gstack: Stack, tmp_path: Path
) -> None:
    made = await cli(gstack, "create", "vm", "--name", "r", "--memory", "64Mi",
                     "--run-strategy", "halted")  # fmt: skip
    assert made.ok().out == (
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  creationTimestamp: null\n"
        "  name: r\nspec:\n  runStrategy: Halted\n  template:\n    metadata:\n"
        "      creationTimestamp: null\n    spec:\n      domain:\n        devices: {}\n"
        "        memory:\n          guest: 64Mi\n        resources: {}\n"
        "      terminationGracePeriodSeconds: 180\nstatus: {}\n"
    )
    applied = await cli(gstack, "apply", "-f", "-", stdin=made.out)
    assert (applied.ok().out, applied.err) == ("virtualmachine.kubevirt.io/r created\n", "")

    with pytest.raises(Rejected) as nothing:
        await send(gstack.nc, c.ResetVM(name="r"))  # no instance to reset
    assert str(nothing.value) == 'virtualmachineinstance.kubevirt.io "r" not found'
    await send(gstack.nc, c.StartVM(name="r"))
    await gstack.until("r", "Running")
    reset = await cli(gstack, "reset", "vmi", "r")
    assert reset.ok().out == "VMI r was scheduled to reset\n"
    for _ in range(400):
        s = await gstack.state("r")
        if s.reset_done:
            break
        await asyncio.sleep(0.05)
    records = await gstack.store.read(Ref.vm("r"))
    asked = [r.envelope for r in records if isinstance(r.envelope.data, m.VMResetRequested)]
    done = [r.envelope.data for r in records if isinstance(r.envelope.data, m.DomainRebooted)]
    assert [e.data for e in asked] == [m.VMResetRequested(vmi_uid=s.vmi_uid)]
    assert asked[0].actor == records[0].envelope.actor != ""  # who reset it: who applied it
    assert done == [m.DomainRebooted(node="node-a", reset=s.reset_asked)]
    assert (s.status, s.reset_done) == ("Running", s.reset_asked)  # the same instance runs on

    shot = await cli(gstack, "vnc", "screenshot", "r", "--file", str(tmp_path / "r.png"))
    assert (shot.ok().out, shot.err) == ("", "")
    png = (tmp_path / "r.png").read_bytes()  # the test driver's own PNG, whole
    assert (png[:8], png[12:16], png[-8:-4]) == (PNG_MAGIC, b"IHDR", b"IEND")

    # memory-dump: a claim made on the VM's node, the dump in it, KubeVirt's status, the download.
    got = await cli(gstack, "memory-dump", "get", "r", "--claim-name", "dump", "--create-claim")
    assert got.ok().out == ("PVC default/dump created\n"
                            "Successfully submitted memory dump request of VM r\n")  # fmt: skip
    for _ in range(400):
        dump = (await gstack.state("r")).memory_dump
        if dump is not None and dump.phase != "InProgress":
            break
        await asyncio.sleep(0.05)
    assert dump is not None and (dump.phase, dump.node) == ("Completed", "node-a"), dump
    claim = gstack.node_dir("node-a") / "volumes" / "default" / "dump"
    assert dump.file_name.startswith("r-dump-") and dump.file_name.endswith(".memory.dump")
    down = await cli(gstack, "memory-dump", "download", "vm", "r", "--output",
                     str(tmp_path / "r.dump"), "--format", "raw")  # fmt: skip
    assert down.ok().out == ""
    assert (tmp_path / "r.dump").read_bytes() == (claim / dump.file_name).read_bytes() != b""
    assert render.vm_object(await gstack.state("r"))["status"]["memoryDumpRequest"] == {
        "claimName": "dump", "phase": "Completed", "fileName": dump.file_name,
        "startTimestamp": render.timestamp(dump.started),
        "endTimestamp": render.timestamp(dump.ended)}  # fmt: skip
    # No claim named: the one associated, again (KubeVirt's dump into the same claim).
    again_out = await cli(gstack, "memory-dump", "get", "r")
    assert again_out.ok().out == "Successfully submitted memory dump request of VM r\n"
    for _ in range(400):
        second = (await gstack.state("r")).memory_dump
        if second is not None and second.phase != "InProgress" and second.started != dump.started:
            break
        await asyncio.sleep(0.05)
    assert second is not None and (second.claim, second.phase) == ("dump", "Completed"), second
    dump = second
    with pytest.raises(Rejected) as other:
        await send(gstack.nc, c.MemoryDumpVM(name="r", claim="other"))
    assert str(other.value) == ("can't request memory dump for pvc [other] while pvc [dump] is "
                                "still associated as the memory dump pvc")  # fmt: skip
    removed = await cli(gstack, "memory-dump", "remove", "r")
    assert removed.ok().out == "Successfully submitted remove memory dump association of VM r\n"
    with pytest.raises(Rejected) as again:
        await send(gstack.nc, c.RemoveMemoryDump(name="r"))
    assert str(again.value) == "can't remove memory dump association for vm r, no association found"
    assert (claim / dump.file_name).exists()  # the claim keeps the dump, as in KubeVirt
    unnamed = await cli(gstack, "memory-dump", "get", "r")  # nothing associated now
    assert (unnamed.code, unnamed.err) == (1, "error: Memory dump requires claim name to be set\n")

    # expose: a headless Service, an object with its own history; the VMI's address its endpoint.
    exposed = await cli(gstack, "expose", "vm", "r", "--port", "22", "--name", "r-ssh")
    assert exposed.ok().out == "Service r-ssh successfully created for vm r\n"
    listed = await cli(gstack, "get", "svc", "r-ssh", "-o", "json")
    obj = listed.json()
    assert (obj["spec"], obj["status"]) == (
        {"clusterIP": "None", "type": "ClusterIP", "selector": {"kubevirt.io/vm": "r"},
         "ports": [{"protocol": "TCP", "port": 22, "targetPort": 22}]},
        {"loadBalancer": {}, "endpoint": (await gstack.state("r")).ip})  # fmt: skip
    with pytest.raises(Rejected) as twice:
        await send(gstack.nc, c.CreateService(name="r-ssh", spec=obj["spec"], vm="r"))
    assert str(twice.value) == 'services "r-ssh" already exists'
    gone = await cli(gstack, "delete", "svc/r-ssh")
    assert gone.ok().out == 'service "r-ssh" deleted\n'
    kinds = [type(r.envelope.data).__name__ for r in await gstack.store.read(
        Ref("service", "default", "r-ssh"))]  # fmt: skip
    assert kinds == ["ServiceCreated", "CommandRejected", "ServiceDeleted"]  # the second create


@pytest.mark.parametrize(("argv", "why"), [
    (["--volume-containerdisk", "name:x"],
     'failed to parse "--volume-containerdisk" flag: src must be specified'),
    (["--volume-pvc", "src:a", "--volume-pvc", "src:a"],
     'failed to parse "--volume-pvc" flag: there is already a volume with name "a"'),
    (["--run-strategy", "often"], 'failed to parse "--run-strategy" flag: invalid run strategy '
     '"often", supported values are: Always, Manual, Halted, Once, RerunOnFailure'),
    (["--volume-import", "type:s3,size:1Gi"], 'failed to parse "--volume-import" flag: invalid '
     'volume import type "s3", virtbus imports blank, ds, http, pvc, registry'),
    (["--volume-import", "type:ds,size:1Gi"],
     'failed to parse "--volume-import" flag: src must be specified'),
])  # fmt: skip
def test_create_vm_refuses_bad_flags_naming_them(argv: list[str], why: str) -> None:
    flags = VMSpecFlags(name="x")
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        attr = {"--volume-containerdisk": "containerdisks", "--volume-pvc": "pvcs",
                "--volume-import": "imports", "--run-strategy": "run_strategy"}[flag]  # fmt: skip
        old = getattr(flags, attr)
        setattr(flags, attr, [*old, value] if isinstance(old, list) else value)
    with pytest.raises(ValidationError) as err:
        generate(flags)
    assert err.value.message == why


def test_create_vm_writes_volumes_disks_and_cloud_init_as_virtctl() -> None:
    flags = VMSpecFlags(name="x", containerdisks=["src:reg/img:1"], pvcs=["src:data,bootorder:1"],
                        imports=["type:blank,size:1Gi,name:scratch"], user="tiny",
                        ssh_keys=["ssh-ed25519 AAAA k"], instancetype="u1")  # fmt: skip
    spec = generate(flags)["spec"]
    assert spec["instancetype"] == {"name": "u1"}
    # (the preference is inferred from the boot disk, a claim, quietly: virtctl's default)
    assert spec["preference"] == {
        "inferFromVolume": "data",
        "inferFromVolumeFailurePolicy": "Ignore",
    }
    assert spec["dataVolumeTemplates"] == [{
        "metadata": {"creationTimestamp": None, "name": "scratch"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {
            "storage": "1Gi"}}}}}]  # fmt: skip
    vmi = spec["template"]["spec"]
    assert vmi["domain"] == {"devices": {"disks": [{"bootOrder": 1, "name": "data"}]},
                             "resources": {}}  # fmt: skip
    assert vmi["volumes"] == [
        {"containerDisk": {"image": "reg/img:1"}, "name": "x-containerdisk-0"},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"dataVolume": {"name": "scratch"}, "name": "scratch"},
        {"cloudInitNoCloud": {"userData": "#cloud-config\nuser: tiny\nssh_authorized_keys:\n"
                                          "  - ssh-ed25519 AAAA k"}, "name": "cloudinitdisk"},
    ]  # fmt: skip
