"""`virtbus rename`: a stopped VM goes on under a new name, its old history kept under the old one.

End to end on the test driver, through the bus and the CLI; refusals are recorded as
`CommandRejected` on the old VM's history, naming the field.
"""

from __future__ import annotations

import pytest
from clirun import Result, virtbus
from driverstack import Stack, seed

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from events.names import Ref


async def cli(st: Stack, *args: str) -> Result:
    return await virtbus(*args, "--server", st.url)


async def test_a_stopped_vm_is_renamed_and_starts_under_its_new_name(stack: Stack) -> None:
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    await send(stack.nc, seed("old-name"))
    await send(stack.nc, c.StartVM(name="old-name"))
    await stack.until("old-name", "Running")
    with pytest.raises(Rejected, match='VM "old-name" must be stopped to be renamed'):
        await send(stack.nc, c.RenameVM(name="old-name", new_name="new-name"))
    await send(stack.nc, c.StopVM(name="old-name"))
    await stack.until("old-name", "Stopped")
    spec = (await stack.state("old-name")).spec

    done = await cli(stack, "rename", "old-name", "new-name")
    assert done.code == 0, done.err
    assert done.out.strip() == "VM old-name was renamed to new-name"
    old, new = await stack.state("old-name"), await stack.state("new-name")
    assert (old.exists, old.deleted, old.renamed_to) == (False, True, "new-name")
    assert (new.exists, new.status, new.spec) == (True, "Stopped", spec)
    [created] = [r.envelope.data for r in await stack.store.read(Ref.vm("new-name"))]
    assert isinstance(created, m.VMCreated) and created.renamed_from == "old-name"
    kinds = await stack.kinds("old-name")
    assert kinds[-1] == "VMRenamed" and "DomainStarted" in kinds  # the old life stays readable

    await send(stack.nc, c.StartVM(name="new-name"))
    s = await stack.until("new-name", "Running")
    assert s.node == "node-a"
    with pytest.raises(Rejected, match='was renamed to "new-name"'):
        await send(stack.nc, c.UndeleteVM(name="old-name"))


async def test_rename_refusals_name_the_field(stack: Stack) -> None:
    await send(stack.nc, seed("one"))
    await send(stack.nc, seed("two"))
    with pytest.raises(Rejected) as taken:
        await send(stack.nc, c.RenameVM(name="one", new_name="two"))
    assert taken.value.field == "new_name"
    assert 'virtualmachine.kubevirt.io "two" already exists' in taken.value.message
    with pytest.raises(Rejected) as same:
        await send(stack.nc, c.RenameVM(name="one", new_name="one"))
    assert same.value.field == "new_name"
    bad = await cli(stack, "rename", "one", "Not_A_Name")
    assert bad.code == 1 and "new_name" in bad.err
    rejected = [r.envelope.data for r in await stack.store.read(Ref.vm("one"))
                if isinstance(r.envelope.data, m.CommandRejected)]  # fmt: skip
    assert [r.field for r in rejected] == ["new_name"] * 3  # the bad name too, by the schema
    assert (await stack.state("one")).exists  # nothing was renamed
