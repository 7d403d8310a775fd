"""Migration on libvirt's test driver, end to end: cold moves, drains, and every rejection.

The test driver cannot migrate, so a running VM moves cold (defined and booted on the target, its
source copy destroyed) and the events say so; a stopped VM's definition moves to the target, where
its next start goes. Real node workers and launchers (the `stack` of test_worker.py); what is
checked is the log and the launcher processes a user sees with `ps`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from driverstack import Stack, driver_stack, launchers, seed

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from events.names import Ref
from events.work import MigrationPolicy
from workers.hypervisor import PAUSED_STATE


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with driver_stack(tmp_path) as st:
        yield st


def with_eviction(cmd: c.ApplyVM, strategy: str) -> c.ApplyVM:
    spec = copy.deepcopy(cmd.spec)
    spec["template"]["spec"]["evictionStrategy"] = strategy
    return c.ApplyVM(name=cmd.name, spec=spec, labels=cmd.labels)


async def two_nodes(stack: Stack) -> None:
    for node in ("node-a", "node-b"):
        stack.provide_seed_volumes(node)
        await stack.node(node)


async def events_of(stack: Stack, name: str) -> list[m.Event]:
    return [r.envelope.data for r in await stack.store.read(Ref.vm(name))]


async def until_event(stack: Stack, name: str, kind: type[m.Event]) -> list[m.Event]:
    for _ in range(400):
        events = await events_of(stack, name)
        if any(isinstance(e, kind) for e in events):
            return events
        await asyncio.sleep(0.05)
    pytest.fail(f"{name}: no {kind.__name__}")


async def test_a_running_vm_moves_cold_and_says_so(stack: Stack) -> None:
    await two_nodes(stack)
    await send(stack.nc, seed("cold", runStrategy="Always"))
    s = await stack.until("cold", "Running")
    assert s.node == "node-a"
    address = s.ip
    [source_launcher] = launchers("cold")
    await send(stack.nc, c.MigrateVM(name="cold", target_node="node-b"))
    events = await until_event(stack, "cold", m.MigrationSucceeded)
    s = await stack.until("cold", "Running")
    assert s.node == "node-b" and s.migration is not None and s.migration.phase == "Succeeded"
    [sched] = [e for e in events if isinstance(e, m.MigrationScheduled)]
    assert (sched.source, sched.target, sched.live) == ("node-a", "node-b", False)
    [done] = [e for e in events if isinstance(e, m.MigrationSucceeded)]
    assert done.mode == "cold"
    started = [e for e in events if isinstance(e, m.DomainStarted) and e.node == "node-b"]
    assert [e.reason for e in started] == ["cold-migrated"]
    stopped = [e for e in events if isinstance(e, m.DomainStopped) and e.node == "node-a"]
    assert [e.reason for e in stopped] == ["migrated"]
    [launcher] = launchers("cold")  # one launcher: the target's; the source's went
    assert launcher != source_launcher
    assert s.status == "Running" and s.ready
    # The instance moved, its address with it: one allocation, no release.
    assert s.ip == address != "" and s.ip_vmi == s.vmi_uid
    assert [type(e) for e in events if isinstance(e, m.IPAllocated | m.IPReleased)] == [
        m.IPAllocated
    ]


async def test_a_paused_vm_moves_cold_and_stays_paused(stack: Stack) -> None:
    """Found by test_model.py: the target booted it running while the log said Paused."""
    workers = []
    for node in ("node-a", "node-b"):
        stack.provide_seed_volumes(node)
        workers.append(await stack.driver_node(node))
    await send(stack.nc, seed("napping", runStrategy="Always"))
    assert (await stack.until("napping", "Running")).node == "node-a"
    await send(stack.nc, c.PauseVM(name="napping"))
    await stack.until("napping", "Paused")
    await send(stack.nc, c.MigrateVM(name="napping", target_node="node-b"))
    await until_event(stack, "napping", m.MigrationSucceeded)
    s = await stack.until("napping", "Paused")
    assert (s.node, s.paused) == ("node-b", True)
    assert await workers[0].hv.domains() == {}
    assert await workers[1].hv.domains() == {"default_napping": PAUSED_STATE}


async def test_a_stopped_vm_moves_its_definition_and_starts_there(stack: Stack) -> None:
    await two_nodes(stack)
    await send(stack.nc, seed("parked"))
    await send(stack.nc, c.MigrateVM(name="parked", target_node="node-b"))
    s = await stack.state("parked")
    assert (s.status, s.home, s.node) == ("Stopped", "node-b", "")
    done = [e for e in await events_of(stack, "parked") if isinstance(e, m.MigrationSucceeded)]
    assert [(e.source, e.target, e.mode) for e in done] == [("", "node-b", "cold")]
    await send(stack.nc, c.StartVM(name="parked"))
    s = await stack.until("parked", "Running")
    assert s.node == "node-b"  # not node-a, which an unplaced VM would get (first by name)
    with pytest.raises(Rejected, match='the VMI is already running on node "node-b"'):
        await send(stack.nc, c.MigrateVM(name="parked", target_node="node-b"))


async def test_drain_on_the_test_driver_moves_cold_or_stops(stack: Stack) -> None:
    await two_nodes(stack)
    await send(stack.nc, c.DrainNode(name="node-b"))  # everything starts on node-a
    vms = {
        "lm": with_eviction(seed("lm", runStrategy="Always"), "LiveMigrate"),
        "maybe": with_eviction(seed("maybe", runStrategy="Manual"), "LiveMigrateIfPossible"),
        "none": seed("none", runStrategy="Always"),  # KubeVirt's default strategy: None
    }
    for name, cmd in vms.items():
        await send(stack.nc, cmd)
        if name == "maybe":
            await send(stack.nc, c.StartVM(name=name))
        assert (await stack.until(name, "Running")).node == "node-a"
    await send(stack.nc, c.UncordonNode(name="node-b"))
    before = {name: await stack.state(name) for name in vms}
    await send(stack.nc, c.DrainNode(name="node-a"))
    await until_event(stack, "lm", m.MigrationSucceeded)
    lm = await stack.until("lm", "Running")
    assert lm.node == "node-b" and lm.vmi_uid == before["lm"].vmi_uid  # moved (cold)
    assert any(isinstance(e, m.MigrationSucceeded) and e.mode == "cold"
               for e in await events_of(stack, "lm"))  # fmt: skip
    maybe = await stack.until("maybe", "Stopped")  # no live migration here: stopped
    assert not any(isinstance(e, m.MigrationRequested) for e in await events_of(stack, "maybe"))
    for _ in range(200):  # stopped, and Always brought it back elsewhere
        none = await stack.state("none")
        if none.status == "Running" and none.vmi_uid != before["none"].vmi_uid:
            break
        await asyncio.sleep(0.05)
    assert none.node == "node-b" and none.vmi_uid != before["none"].vmi_uid
    assert maybe.node == ""
    with pytest.raises(Rejected, match='node "node-a": 0/1 nodes are available: 1 node'):
        await send(stack.nc, c.MigrateVM(name="lm", target_node="node-a"))  # cordoned
    await send(stack.nc, c.UncordonNode(name="node-a"))
    await send(stack.nc, c.MigrateVM(name="lm", target_node="node-a"))
    await until_event(stack, "lm", m.MigrationSucceeded)
    assert (await stack.until("lm", "Running")).node in ("node-a", "node-b")


async def test_every_rejection_is_recorded_with_kubevirts_words(stack: Stack) -> None:
    await two_nodes(stack)
    big = seed("big", runStrategy="Always")
    big.spec["template"]["spec"]["domain"]["resources"]["requests"]["memory"] = "10Gi"
    other = seed("other", runStrategy="Always")
    other.spec["template"]["spec"]["domain"]["resources"]["requests"]["memory"] = "10Gi"
    await send(stack.nc, big)
    assert (await stack.until("big", "Running")).node == "node-a"
    await send(stack.nc, other)
    assert (await stack.until("other", "Running")).node == "node-b"
    cases = [
        (c.MigrateVM(name="big", target_node="node-a"),
         'the VMI is already running on node "node-a"; pick another target'),
        (c.MigrateVM(name="big", target_node="ghost"), 'nodes "ghost" not found'),
        (c.MigrateVM(name="big", target_node="node-b"),
         'node "node-b": 0/1 nodes are available: 1 Insufficient memory.'),
        (c.MigrateVM(name="big"), "no node to migrate to"),  # accepted, fails at scheduling
        (c.CancelMigration(name="big"), "no migration in progress for VMI big"),
        (c.MigrateVM(name="nobody"), 'virtualmachine.kubevirt.io "nobody" not found'),
        (c.DrainNode(name="ghost"), 'nodes "ghost" not found'),
        (c.UncordonNode(name="ghost"), 'nodes "ghost" not found'),
        (c.MigrateVM(name="big", migration="Bad_Name"), "metadata.name: 'Bad_Name' is not a"),
    ]  # fmt: skip
    for cmd, reason in cases:
        if reason == "no node to migrate to":  # only the controller knows: a MigrationFailed
            await send(stack.nc, cmd)
            events = await until_event(stack, "big", m.MigrationFailed)
            [failed] = [e for e in events if isinstance(e, m.MigrationFailed)]
            assert failed.reason.startswith("no node to migrate to: 0/1 nodes are available")
            continue
        with pytest.raises(Rejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
            await send(stack.nc, cmd)
        last = (await stack.store.read(cmd.target))[-1].envelope.data
        assert isinstance(last, m.CommandRejected) and last.command == type(cmd).__name__
        assert last.reason.startswith(reason)
    s = await stack.state("big")
    assert (s.node, s.status) == ("node-a", "Running")  # none of it touched the VM


async def virtbus(stack: Stack, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "virtbus"), *args, "--server", stack.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_migrate_watch_and_get_migrations(stack: Stack) -> None:
    await two_nodes(stack)
    await send(stack.nc, seed("shown", runStrategy="Always"))
    await stack.until("shown", "Running")
    code, out, err = await virtbus(stack, "migrate", "shown", "--watch")
    print(out)
    assert (code, err) == (0, "")
    lines = out.strip().splitlines()
    assert lines[0].startswith("VM shown was scheduled to migrate (kubevirt-migrate-vm-")
    assert "Succeeded" in out and "100%" in out
    assert lines[-1].startswith("VM shown migrated (cold) from node-a to node-b in ")
    migration = lines[0].rpartition("(")[2].rstrip(")")
    with pytest.raises(Rejected):  # a rejected attempt is no migration: not listed
        await send(stack.nc, c.MigrateVM(name="shown", target_node="ghost-node"))
    await send(stack.nc, c.MigrateVM(name="shown", migration="back-home"))
    await until_event(stack, "shown", m.MigrationSucceeded)
    for _ in range(100):
        if (await stack.state("shown")).node == "node-a":
            break
        await asyncio.sleep(0.05)
    code, out, err = await virtbus(stack, "get", "migrations")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "PHASE", "VMI"]
    assert [r.split() for r in out.splitlines()[1:]] == [
        [migration, "Succeeded", "shown"],
        ["back-home", "Succeeded", "shown"],
    ]  # every attempt stays
    code, out, err = await virtbus(stack, "get", "vmim", "back-home", "-o", "json")
    obj = json.loads(out)
    assert (obj["kind"], obj["spec"]["vmiName"], obj["status"]["phase"]) == (
        "VirtualMachineInstanceMigration", "shown", "Succeeded")  # fmt: skip
    state = obj["status"]["migrationState"]
    assert (state["sourceNode"], state["targetNode"], state["mode"]) == ("node-b", "node-a", "cold")
    code, _, err = await virtbus(stack, "migrate", "shown", "--to", "node-a", "--watch")
    assert code == 1 and 'the VMI is already running on node "node-a"' in err


async def test_migrations_beyond_the_parallel_limit_queue(tmp_path: Path) -> None:
    policy = MigrationPolicy(parallel_per_cluster=1)
    async with driver_stack(tmp_path, policy=policy) as st:
        await two_nodes(st)
        await send(st.nc, c.DrainNode(name="node-b"))  # both start on node-a
        for name in ("first", "second"):
            await send(st.nc, seed(name, runStrategy="Always"))
            assert (await st.until(name, "Running")).node == "node-a"
        await send(st.nc, c.UncordonNode(name="node-b"))
        for name in ("first", "second"):  # back to back: the second must wait its turn
            await send(st.nc, c.MigrateVM(name=name, target_node="node-b"))
        seq: dict[tuple[str, type[m.Event]], int] = {}
        for name in ("first", "second"):
            await until_event(st, name, m.MigrationSucceeded)
            for r in await st.store.read(Ref.vm(name)):
                seq[(name, type(r.envelope.data))] = r.seq
            assert (await st.until(name, "Running")).node == "node-b"
        # One at a time: the second was scheduled only after the first succeeded.
        assert seq[("first", m.MigrationSucceeded)] < seq[("second", m.MigrationScheduled)]


async def test_a_vmim_manifest_migrates_and_reapplying_it_changes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    await two_nodes(stack)
    await send(stack.nc, seed("applied", runStrategy="Always"))
    assert (await stack.until("applied", "Running")).node == "node-a"
    manifest = tmp_path / "vmim.yaml"
    manifest.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\n"
        "metadata:\n  name: move-it\nspec:\n  vmiName: applied\n"
    )
    code, out, err = await virtbus(stack, "apply", "-f", str(manifest))
    assert (code, out.strip(), err) == (
        0, "virtualmachineinstancemigration.kubevirt.io/move-it created", "")  # fmt: skip
    await until_event(stack, "applied", m.MigrationSucceeded)
    s = await stack.until("applied", "Running")
    assert s.node == "node-b" and s.migration is not None and s.migration.id == "move-it"
    code, out, _ = await virtbus(stack, "apply", "-f", str(manifest))
    assert (code, out.strip()) == (
        0,
        "virtualmachineinstancemigration.kubevirt.io/move-it unchanged",
    )
    assert (await stack.state("applied")).migrations == 1


async def test_a_cold_move_to_a_node_without_the_volumes_fails_and_cleans_up(stack: Stack) -> None:
    stack.provide_seed_volumes("node-a")  # node-b lacks the claim and the image
    await stack.node("node-a")
    await stack.node("node-b")
    await send(stack.nc, seed("stuck", runStrategy="Always"))
    assert (await stack.until("stuck", "Running")).node == "node-a"
    [launcher] = launchers("stuck")
    await send(stack.nc, c.MigrateVM(name="stuck", target_node="node-b"))
    events = await until_event(stack, "stuck", m.MigrationFailed)
    [failed] = [e for e in events if isinstance(e, m.MigrationFailed)]
    assert failed.reason.startswith("target node-b: ")
    assert 'persistentvolumeclaim "iso-centos7" not found' in failed.reason
    await until_event(stack, "stuck", m.LauncherDeleted)  # the target's launcher went
    s = await stack.state("stuck")
    assert (s.node, s.status) == ("node-a", "Running")
    assert s.migration is not None and s.migration.target_pod == ""
    assert launchers("stuck") == [launcher]  # the source's, untouched


TWIN = {"node-a": "node-b", "node-b": "node-a"}


async def test_a_migration_policy_picks_its_vmis_and_is_recorded_on_their_migrations(
    stack: Stack, tmp_path: Path
) -> None:
    """KubeVirt's MigrationPolicy: applied as KubeVirt's example (a namespace virtbus has no
    labels for picks nothing), one that picks a VM by its labels and namespace, its name on the
    VM's migration (`migrationState.migrationPolicyName`), a VM it does not pick running by the
    cluster's settings, and the policy's history."""
    from clirun import virtbus

    async def cli(*args: str, stdin: str | None = None) -> str:
        return (await virtbus(*args, "--server", stack.url, stdin=stdin)).ok().out

    await two_nodes(stack)
    policy = {"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
              "metadata": {"name": "db-policy"},
              "spec": {"allowPostCopy": True, "completionTimeoutPerGiB": 10,
                       "selectors": {"virtualMachineInstanceSelector": {"workload": "db"},
                                     "namespaceSelector": {
                                         "kubernetes.io/metadata.name": "default"}}}}  # fmt: skip
    assert await cli("apply", "-f", "-", stdin=json.dumps(policy)) == (
        "migrationpolicy.migrations.kubevirt.io/db-policy created\n")  # fmt: skip
    assert await cli("apply", "-f", "-", stdin=json.dumps(policy)) == (
        "migrationpolicy.migrations.kubevirt.io/db-policy unchanged\n")  # fmt: skip
    [row] = (await cli("get", "migrationpolicies")).splitlines()[1:]
    assert row.split()[0] == "db-policy"

    db = seed("db", runStrategy="Always")
    db.spec["template"].setdefault("metadata", {})["labels"] = {"workload": "db"}
    await send(stack.nc, db)
    await send(stack.nc, seed("web", runStrategy="Always"))
    for vm in ("db", "web"):
        here = (await stack.until(vm, "Running")).node
        await send(stack.nc, c.MigrateVM(name=vm, target_node=TWIN[here]))
        events = await until_event(stack, vm, m.MigrationSucceeded)
        [sched] = [e for e in events if isinstance(e, m.MigrationScheduled)]
        assert sched.policy == ("db-policy" if vm == "db" else ""), vm
    state = json.loads(await cli("get", "vmi", "db", "-o", "json"))["status"]["migrationState"]
    assert state["migrationPolicyName"] == "db-policy"

    assert await cli("delete", "migrationpolicy", "db-policy") == (
        'migrationpolicy.migrations.kubevirt.io "db-policy" deleted\n')  # fmt: skip
    assert await cli("get", "migrationpolicies") == "No resources found\n"
    items = json.loads(await cli("history", "migrationpolicy/db-policy", "-o", "json"))["items"]
    # each command, and what it did: the second apply changed nothing
    assert [i["type"] for i in items] == [
        "ApplyMigrationPolicy", "io.virtbus.migrationpolicy.migration_policy_applied.v1",
        "ApplyMigrationPolicy", "DeleteMigrationPolicy",
        "io.virtbus.migrationpolicy.migration_policy_deleted.v1"]  # fmt: skip
