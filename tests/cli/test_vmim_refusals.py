"""A VirtualMachineInstanceMigration is about a VMI: virt-api's migration-create admitter refuses
one for a VMI that does not exist (a stopped VM has none) or has ended, in its words, naming
`spec.vmiName`; `virtbus migrate` (virtctl's verb, virt-api's migrate subresource) says "VM is not
running" of a VM whose VMI is not. Through the CLI, on the test driver."""

from __future__ import annotations

import json

from clirun import Result, virtbus
from driverstack import Stack, seed
from manifests import vm

from bus.client import send
from events import commands as c
from events import model as m


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


def vmim(vmi: str) -> str:
    return json.dumps({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                       "metadata": {"name": f"move-{vmi}"}, "spec": {"vmiName": vmi}})  # fmt: skip


async def refused(st: Stack, vmi: str) -> str:
    """The CLI's words; the CommandRejected in the VMI's history names `spec.vmiName`."""
    got = await cli(st, "apply", "-f", "-", stdin=vmim(vmi))
    assert (got.code, got.out) == (1, ""), got
    last = (await st.events(vmi))[-1]
    assert isinstance(last, m.CommandRejected) and last.field == "spec.vmiName", last
    assert got.err == f"error: {vmi}: {last.reason}\n"
    return last.reason


async def test_a_vmim_needs_a_vmi_that_exists_and_has_not_ended(stack: Stack) -> None:
    assert await refused(stack, "ghost") == 'the VMI "default/ghost" does not exist'

    # A stopped VM has no VMI (it ran once on node-a, so virtbus's verb could move it cold).
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    await send(stack.nc, seed())
    await send(stack.nc, c.StartVM(name="centos7"))
    await stack.until("centos7", "Running")
    await send(stack.nc, c.StopVM(name="centos7"))
    await stack.until("centos7", "Stopped")
    assert await refused(stack, "centos7") == 'the VMI "default/centos7" does not exist'

    doc = vm("broken", kind="VirtualMachineInstance")
    doc["spec"]["domain"]["devices"] = {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}
    doc["spec"]["volumes"] = [{"name": "root", "persistentVolumeClaim": {"claimName": "absent"}}]
    (await cli(stack, "apply", "-f", "-", stdin=json.dumps(doc))).ok()
    (await cli(stack, "wait", "vmi/broken", "--for", "jsonpath={.status.phase}=Failed")).ok()
    assert await refused(stack, "broken") == "Cannot migrate VMI in finalized state."
    s = await stack.state("broken")
    assert (s.phase, s.migrations, s.migration) == ("Failed", 0, None)  # nothing was carried out
    assert (await stack.state("centos7")).migrations == 0


async def test_a_vmi_not_yet_running_is_refused_by_the_vmim_and_the_verb(stack: Stack) -> None:
    """No node: the VMI waits to be scheduled (phase Scheduling), and cannot migrate yet."""
    await send(stack.nc, seed("waiting", runStrategy="Always"))
    s = await stack.until("waiting", "ErrorUnschedulable")
    assert s.phase == "Scheduling"
    assert await refused(stack, "waiting") == "VMI is not running"
    verb = await cli(stack, "migrate", "waiting")
    assert (verb.code, verb.out, verb.err) == (1, "", "error: VM is not running\n")
