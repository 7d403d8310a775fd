"""`wait vmsnapshot|vmrestore NAME --for condition=Ready`, typed as KubeVirt's user guide does.

A VirtualMachineSnapshot's and a VirtualMachineRestore's status carry KubeVirt's `Progressing`
and `Ready` conditions (the snapshot controller's reasons), derived from the phase the fold
knows; `wait` reads them. Through the CLI, on the test driver, against the real nats-server.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from clirun import Result, virtbus
from driverstack import Stack, seed

from bus.client import send
from events import commands as c
from events.render import timestamp
from events.state import Restore, Snapshot
from virtctl.snapshots import restore_conditions, snapshot_conditions


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def stopped_seed(st: Stack) -> None:
    """The seed VM, run once on node-a (so a node holds its volumes), then stopped."""
    st.provide_seed_volumes("node-a")
    await st.node("node-a")
    await send(st.nc, seed())
    await send(st.nc, c.StartVM(name="centos7"))
    await st.until("centos7", "Running")
    await send(st.nc, c.StopVM(name="centos7"))
    await st.until("centos7", "Stopped")


def cond(ctype: str, status: str, reason: str, at: datetime | None) -> dict[str, Any]:
    return {"type": ctype, "status": status, "lastProbeTime": None,
            "lastTransitionTime": timestamp(at), "reason": reason}  # fmt: skip


RESTORE_YAML = """\
apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineRestore
metadata:
  name: restore-my-vm
spec:
  target:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: centos7
  virtualMachineSnapshotName: snap-my-vm
"""


async def test_wait_for_ready_on_a_snapshot_and_a_restore(stack: Stack) -> None:
    await stopped_seed(stack)
    made = await cli(stack, "snapshot", "centos7", "snap-my-vm")
    assert made.ok().out == "virtualmachinesnapshot.snapshot.kubevirt.io/snap-my-vm created\n"
    # waits on the log from wherever the snapshot is: in progress or already done
    waited = await cli(stack, "wait", "vmsnapshot", "snap-my-vm", "--for", "condition=Ready",
                       "--timeout", "30s")  # fmt: skip
    assert waited.ok().out == (
        "virtualmachinesnapshot.snapshot.kubevirt.io/snap-my-vm condition met\n"
    )
    snap = (await stack.state("centos7")).snapshots["snap-my-vm"]
    assert snap.phase == "Succeeded" and snap.ready_at is not None
    got = (await cli(stack, "get", "vmsnapshot", "snap-my-vm", "-o", "json")).json()
    assert got["status"]["conditions"] == [
        cond("Progressing", "False", "Operation complete", snap.ready_at),
        cond("Ready", "True", "Ready", snap.ready_at),
    ]

    applied = await cli(stack, "apply", "-f", "-", stdin=RESTORE_YAML)
    assert applied.ok().out == (
        "virtualmachinerestore.snapshot.kubevirt.io/restore-my-vm created\n"
    )
    waited = await cli(stack, "wait", "vmrestore", "restore-my-vm", "--for", "condition=Ready",
                       "--timeout", "30s")  # fmt: skip
    assert waited.ok().out == (
        "virtualmachinerestore.snapshot.kubevirt.io/restore-my-vm condition met\n"
    )
    r = (await stack.state("centos7")).restore
    assert r is not None and r.complete and r.done_at is not None
    got = (await cli(stack, "get", "vmrestore", "restore-my-vm", "-o", "json")).json()
    assert got["status"]["complete"] is True
    assert got["status"]["conditions"] == [
        cond("Progressing", "False", "Operation complete", r.done_at),
        cond("Ready", "True", "Operation complete", r.done_at),
    ]


async def test_a_snapshot_not_ready_keeps_wait_waiting(stack: Stack) -> None:
    """No node holds the volumes until one comes up: the snapshot is requested and stays in
    progress, and `wait` runs out its timeout (exit 1, kubectl's words)."""
    await stopped_seed(stack)
    await stack.stop_nodes()
    await send(stack.nc, c.SnapshotVM(name="centos7", snapshot="pending"))
    for _ in range(200):  # the request is in the log as soon as send returns; the read model
        if "pending" in (await stack.state("centos7")).snapshots:  # folds it from there
            break
        await asyncio.sleep(0.05)
    snap = (await stack.state("centos7")).snapshots["pending"]
    assert snap.phase == "InProgress"
    got = (await cli(stack, "get", "vmsnapshot", "pending", "-o", "json")).json()
    assert got["status"]["conditions"] == [
        cond("Progressing", "True", "Source locked and operation in progress", snap.created),
        cond("Ready", "False", "Not ready", snap.created),
    ]
    waited = await cli(stack, "wait", "vmsnapshot", "pending", "--for", "condition=Ready",
                       "--timeout", "2s")  # fmt: skip
    assert waited.code == 1
    assert waited.err.strip().endswith("timed out waiting for the condition on "
                                       "virtualmachinesnapshots/pending")  # fmt: skip


def test_conditions_of_each_phase() -> None:
    """The failed phases, which the driver does not reach on its own: the reason is the error."""
    t0, t1 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC), datetime(2024, 5, 1, 10, 0, 7, tzinfo=UTC)
    failed = Snapshot(name="s", phase="Failed", created=t0, failed_at=t1, reason="copy failed")
    assert snapshot_conditions(failed) == [
        cond("Progressing", "False", "In error state", t1),
        cond("Ready", "False", "Not ready", t0),
        cond("Failure", "True", "copy failed", t1),
    ]
    going = Restore(name="r", snapshot="s", created=t0)
    assert restore_conditions(going) == [
        cond("Progressing", "True", "Creating new PVCs", t0),
        cond("Ready", "False", "Waiting for new PVCs", t0),
    ]
    broken = Restore(name="r", snapshot="s", created=t0, done_at=t1, reason="no space")
    assert restore_conditions(broken) == [
        cond("Progressing", "False", "Operation failed", t1),
        cond("Ready", "False", "Operation failed", t1),
        cond("Failure", "True", "no space", t1),
    ]
