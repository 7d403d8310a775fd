"""Snapshots and a crashed start on real QEMU/KVM nodes, end to end through the bus.

What is checked is what a user could check: the bytes of the VM's disk files, the QEMU processes
in /proc, the VM's history; never worker internals. Skipped only where /dev/kvm or root is
missing (`kvm_host` says why).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from images import head, write
from procs import qemu_pids
from qemustack import QemuStack, apply, qemu_stack, seed_doc, short_grace

from bus.client import Rejected, send
from events import commands as c
from events import model as m
from workers.volumes import claim_dir

pytestmark = pytest.mark.kvm

NODE = "node-s"
NODE_INDEX = 24  # its own VNC/migration port range, away from the other QEMU tests' nodes


@pytest.fixture
async def sstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QemuStack]:
    # The worker is a process of its own, so that a test can SIGKILL it.
    base = tmp_path_factory.mktemp("sq")
    async with qemu_stack(base, nodes={NODE: NODE_INDEX}, processes=frozenset({NODE})) as st:
        yield st


async def test_a_running_vm_is_snapshotted_and_restored_on_real_qemu(sstack: QemuStack) -> None:
    sstack.provide_seed_volumes()
    await send(sstack.nc, apply(short_grace(seed_doc())))
    await send(sstack.nc, c.StartVM(name="centos7"))
    await sstack.until("centos7", "Running")
    (pid,) = qemu_pids("default_centos7")
    pvc = claim_dir(sstack.data_dir, "default", "iso-centos7") / "disk.img"
    host = sstack.host_root / "data" / "disk.img"
    write(pvc, b"before")
    write(host, b"BEFORE")

    seen = len(await sstack.events("centos7"))
    await send(sstack.nc, c.SnapshotVM(name="centos7", snapshot="live"))
    after = await sstack.until_event("centos7", m.SnapshotSucceeded, after=seen)
    assert not [e for e in after if isinstance(e, m.SnapshotFailed | m.DomainPaused)]
    assert qemu_pids("default_centos7") == [pid]  # the same guest, paused and resumed in place
    assert (await sstack.state("centos7")).status == "Running"
    snap = (await sstack.state("centos7")).snapshots["live"]
    assert (snap.online, snap.volumes) == (True, ["cdromiso", "harddrive"])

    with pytest.raises(Rejected, match="is not stopped"):
        await send(sstack.nc, c.RestoreVM(name="centos7", snapshot="live", restore="back"))
    await send(sstack.nc, c.StopVM(name="centos7"))
    await sstack.until("centos7", "Stopped")
    assert qemu_pids("default_centos7") == []
    write(pvc, b"after!")
    write(host, b"AFTER!")
    seen = len(await sstack.events("centos7"))
    await send(sstack.nc, c.RestoreVM(name="centos7", snapshot="live", restore="back"))
    await sstack.until_event("centos7", m.RestoreSucceeded, after=seen)
    assert (head(pvc), head(host)) == (b"before", b"BEFORE")
    await send(sstack.nc, c.StartVM(name="centos7"))
    await sstack.until("centos7", "Running")  # and it boots from the restored disks
    assert len(qemu_pids("default_centos7")) == 1


async def test_a_worker_killed_mid_start_on_real_qemu_leaves_one_guest(sstack: QemuStack) -> None:
    sstack.provide_seed_volumes()
    doc = short_grace(seed_doc("crashy"))
    doc["spec"]["running"] = True
    await sstack.kill_worker(NODE)  # the start is decided with no worker to take it
    await send(sstack.nc, apply(doc))
    for _ in range(200):
        if any(isinstance(e, m.VMScheduled) for e in await sstack.events("crashy")):
            break
        await asyncio.sleep(0.05)
    await sstack.start_worker(NODE, process=True)
    # Kill it again as soon as it is at work: the Start item is in flight, unacknowledged.
    for _ in range(400):
        if qemu_pids("default_crashy") or any(
            isinstance(e, m.LauncherCreated) for e in await sstack.events("crashy")
        ):
            break
        await asyncio.sleep(0.01)
    await sstack.kill_worker(NODE)
    await sstack.start_worker(NODE, process=True)
    s = await sstack.until("crashy", "Running", within=90)
    await asyncio.sleep(1)  # whatever was still in flight lands
    assert s.node == NODE
    assert len(qemu_pids("default_crashy")) == 1  # one guest, not two
    history = await sstack.events("crashy")
    scheduled = max(i for i, e in enumerate(history) if isinstance(e, m.VMScheduled))
    assert sum(isinstance(e, m.DomainStarted) for e in history[scheduled:]) == 1
    assert (await sstack.domains(NODE)).keys() >= {"default_crashy"}
