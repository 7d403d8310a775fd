"""A VirtualMachineInstance as KubeVirt has it, across the processes: one applied alone is no VM
(not listed by `get vms`, not started or stopped by the VM verbs: deleting it is how it stops),
and once it failed it stays, phase Failed, until deleted; a VMIM's name is one object (two
migrations of one name cannot exist at once)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from clirun import Result, virtbus
from driverstack import Stack, driver_stack, seed
from manifests import vm

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from events.names import Ref
from events.work import MigrationPolicy

LONE = ('error: virtualmachine.kubevirt.io "lone" not found in namespace "default"; "lone" is a '
        "VirtualMachineInstance: delete it to stop it (virtbus delete vmi lone)\n")  # fmt: skip
VMIMS = "virtualmachineinstancemigrations.kubevirt.io"


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def until_event(st: Stack, name: str, kind: type[m.Event]) -> list[m.Event]:
    for _ in range(600):
        events = [r.envelope.data for r in await st.store.read(Ref.vm(name))]
        if any(isinstance(e, kind) for e in events):
            return events
        await asyncio.sleep(0.05)
    pytest.fail(f"{name}: no {kind.__name__}")


async def test_a_lone_vmi_is_stopped_by_deleting_it(stack: Stack) -> None:
    await stack.node("node-a")
    lone = json.dumps(vm("lone", kind="VirtualMachineInstance"))
    assert (await cli(stack, "apply", "-f", "-", stdin=lone)).ok().out == (
        "virtualmachineinstance.kubevirt.io/lone created\n")  # fmt: skip
    (await cli(stack, "wait", "vmi/lone", "--for", "jsonpath={.status.phase}=Running")).ok()
    assert (await cli(stack, "get", "vms")).ok().out == "No resources found in default namespace.\n"
    for verb in ("stop", "start", "restart"):
        refused = await cli(stack, verb, "lone")
        assert (refused.code, refused.err) == (1, LONE), verb
    as_vm = await cli(stack, "delete", "vm", "lone")
    assert (as_vm.code, as_vm.err) == (1, 'error: virtualmachines.kubevirt.io "lone" not found\n')
    deleted = await cli(stack, "delete", "vmi/lone")
    assert deleted.ok().out == 'virtualmachineinstance.kubevirt.io "lone" deleted\n'
    (await cli(stack, "wait", "vmi", "lone", "--for", "delete")).ok()
    kinds = await stack.kinds("lone")
    assert kinds[-1] == "VMDeleted", kinds
    assert not (await stack.state("lone")).exists

    # The name is free again, for a VM too; a VM's name is not free for a lone VMI.
    (await cli(stack, "apply", "-f", "-", stdin=json.dumps(vm("lone")))).ok()
    clash = await cli(stack, "apply", "-f", "-", stdin=lone)
    assert (clash.code, clash.err) == (1, (
        'error: lone: a VirtualMachine named "lone" exists; a VirtualMachineInstance cannot take '
        "its name until it is deleted\n"))  # fmt: skip


async def test_a_failed_vmi_stays_failed_until_deleted(stack: Stack) -> None:
    await stack.node("node-a")
    doc = vm("broken", kind="VirtualMachineInstance")
    doc["spec"]["domain"]["devices"] = {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}
    doc["spec"]["volumes"] = [{"name": "root", "persistentVolumeClaim": {"claimName": "absent"}}]
    (await cli(stack, "apply", "-f", "-", stdin=json.dumps(doc))).ok()
    failed = await cli(stack, "wait", "vmi/broken", "--for", "jsonpath={.status.phase}=Failed")
    assert failed.ok().out == "virtualmachineinstance.kubevirt.io/broken condition met\n"
    # Another VM made and run after it: once it runs, the controller has long reacted to the
    # failure, and the failed VMI is still there.
    await send(stack.nc, c.ApplyVM(name="later", spec=vm("later", strategy="Always")["spec"]))
    await stack.until("later", "Running")
    got = await cli(stack, "get", "vmi", "broken", "-o", "jsonpath={.status.phase}")
    assert got.ok().out == "Failed"
    # its AGE runs from its creation (it was `<unknown>`, a failed VMI never having run)
    [row] = (await cli(stack, "get", "vmi", "broken")).ok().out.splitlines()[1:]
    assert re.fullmatch(r"\d+s", row.split()[1]), row
    assert "VMStopped" not in await stack.kinds("broken")
    assert (await stack.state("broken")).phase == "Failed"
    (await cli(stack, "delete", "vmi", "broken")).ok()
    assert (await cli(stack, "get", "vmis", "-o", "name")).ok().out == (
        "virtualmachineinstance.kubevirt.io/later\n")  # fmt: skip


async def test_two_migrations_of_one_name_cannot_exist_at_once(tmp_path: Path) -> None:
    # No migration may run (parallelMigrationsPerCluster 0): each one waits, Pending, in flight.
    async with driver_stack(tmp_path, policy=MigrationPolicy(parallel_per_cluster=0)) as st:
        st.provide_seed_volumes("node-a")
        st.provide_seed_volumes("node-b")
        await st.node("node-a")
        await st.node("node-b")
        for name in ("one", "two"):
            await send(st.nc, seed(name, runStrategy="Always"))
            await st.until(name, "Running")
        await send(st.nc, c.MigrateVM(name="one", migration="move"))
        with pytest.raises(Rejected) as err:
            await send(st.nc, c.MigrateVM(name="two", migration="move"))
        assert err.value.message == (
            'virtualmachineinstancemigrations.kubevirt.io "move" already exists (migrating VMI '
            "one)")  # fmt: skip
        again = await send(st.nc, c.MigrateVM(name="one", migration="move"))  # the same object
        assert again.events == []
        cancelled = await cli(st, "delete", "vmim", "move")  # deleting it in flight cancels it
        assert cancelled.ok().out == 'virtualmachineinstancemigration.kubevirt.io "move" deleted\n'
        await until_event(st, "one", m.MigrationFailed)
        await send(st.nc, c.MigrateVM(name="two", migration="move"))  # no longer in flight
        finished = await cli(st, "delete", "vmim", "nothing")
        assert finished.err == f'error: {VMIMS} "nothing" not found\n'
