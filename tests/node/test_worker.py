"""Node workers on real libvirt (the built-in test driver), end to end through the bus.

The orchestrator runs in-process; workers run in-process or, where they must be killed, as their
own processes. Every assertion reads the log or the processes a user could see (launchers), never
worker internals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from driverstack import Stack, launchers, seed

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref


async def test_seed_vm_lifecycle_on_the_test_driver(stack: Stack) -> None:
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    await send(stack.nc, seed())
    await send(stack.nc, c.StartVM(name="centos7"))
    s = await stack.until("centos7", "Running")
    assert (s.phase, s.node) == ("Running", "node-a")
    assert len(launchers("centos7")) == 1  # the VM's pod really runs
    await send(stack.nc, c.PauseVM(name="centos7"))
    await stack.until("centos7", "Paused")
    await send(stack.nc, c.UnpauseVM(name="centos7"))
    await stack.until("centos7", "Running")
    await send(stack.nc, c.StopVM(name="centos7"))
    await stack.until("centos7", "Stopped")
    assert launchers("centos7") == []
    await send(stack.nc, c.StartVM(name="centos7"))
    await stack.until("centos7", "Running")
    await send(stack.nc, c.DeleteVM(name="centos7"))
    for _ in range(200):
        if (await stack.state("centos7")).deleted:
            break
        await asyncio.sleep(0.05)
    assert launchers("centos7") == []
    await send(stack.nc, c.UndeleteVM(name="centos7"))
    assert (await stack.state("centos7")).status == "Stopped"
    kinds = await stack.kinds("centos7")
    assert kinds.count("DomainStarted") == 2
    assert kinds.count("DomainStopped") == 2
    assert kinds[-4:] == ["LauncherDeleted", "IPReleased", "VMDeleted", "VMUndeleted"]


async def test_a_missing_claim_fails_the_start_with_kubevirts_status(stack: Stack) -> None:
    await stack.node("node-a")  # no volumes provided on this node
    await send(stack.nc, seed("nopvc"))
    await send(stack.nc, c.StartVM(name="nopvc"))
    for _ in range(200):
        history = [r.envelope.data for r in await stack.store.read(Ref.vm("nopvc"))]
        failed = [e for e in history if isinstance(e, m.VMStartFailed)]
        if failed:
            break
        await asyncio.sleep(0.05)
    assert failed[0].status == "ErrorPvcNotFound"
    assert 'persistentvolumeclaim "iso-centos7" not found' in failed[0].reason
    assert launchers("nopvc") == []


@pytest.mark.parametrize(("strategy", "after"), [("Always", "Running"), ("Manual", "Stopped")])
async def test_a_killed_launcher_is_handled_per_run_strategy(
    stack: Stack, strategy: str, after: str
) -> None:
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    name = f"kill-{strategy.lower()}"
    await send(stack.nc, seed(name, runStrategy=strategy))
    if strategy == "Manual":
        await send(stack.nc, c.StartVM(name=name))
    await stack.until(name, "Running")
    (pid,) = launchers(name)
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        kinds = await stack.kinds(name)
        if "LauncherFailed" in kinds and (await stack.state(name)).status == after:
            break
        await asyncio.sleep(0.05)
    s = await stack.state(name)
    assert s.status == after
    failed = [r.envelope.data for r in await stack.store.read(Ref.vm(name))
              if isinstance(r.envelope.data, m.LauncherFailed)]  # fmt: skip
    assert failed[0].exit_code == -9
    assert len(launchers(name)) == (1 if after == "Running" else 0)


async def _worker_process(stack: Stack, node: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers", "--node", node, "--data-dir", str(stack.root / "nodes"),
        "--server", stack.url, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_a_worker_killed_mid_start_ends_with_one_running_instance(stack: Stack) -> None:
    stack.provide_seed_volumes("node-a")
    await send(stack.nc, seed("crashy", running=True))  # queued: no node yet
    await stack.until("crashy", "ErrorUnschedulable")
    proc = await _worker_process(stack, "node-a")
    try:
        # Kill it as soon as it has registered: the start work is then in flight or unacked.
        await stack.until_node("node-a")
        for _ in range(100):
            if "VMScheduled" in await stack.kinds("crashy"):
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await _worker_process(stack, "node-a")
        s = await stack.until("crashy", "Running", within=40)
        await asyncio.sleep(1)  # anything still in flight lands
        history = [r.envelope for r in await stack.store.read(Ref.vm("crashy"))]
        current = [e for e in history if isinstance(e.data, m.DomainStarted)
                   and e.version > max(h.version for h in history
                                       if isinstance(h.data, m.VMScheduled))]  # fmt: skip
        assert len(current) == 1  # the instance that runs started once
        assert len(launchers("crashy")) == 1  # and one launcher, not two
        assert s.node == "node-a"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()
    assert launchers("crashy") == []  # the launcher died with its worker


async def test_hotplug_on_the_test_driver_fails_with_libvirts_reason(stack: Stack) -> None:
    """libvirt's test driver has no attachDeviceFlags: the user sees libvirt's own words."""
    stack.provide_seed_volumes("node-a")
    claim = stack.node_dir("node-a") / "volumes" / "default" / "data"
    claim.mkdir(parents=True)
    (claim / "disk.img").write_bytes(b"\0" * 4096)
    await stack.node("node-a")
    await send(stack.nc, seed("hot", runStrategy="Always"))
    await stack.until("hot", "Running")
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    await send(stack.nc, c.AddVolume(name="hot", volume=volume, disk={"name": "data"}))
    for _ in range(200):
        s = await stack.state("hot")
        if s.volumes.get("data") == "Failed":
            break
        await asyncio.sleep(0.05)
    history = [r.envelope.data for r in await stack.store.read(Ref.vm("hot"))]
    [failed] = [e for e in history if isinstance(e, m.VolumeAttachFailed)]
    print(f"test driver: {failed.reason}")
    assert (failed.volume, failed.node) == ("data", "node-a")
    assert failed.reason.startswith("libvirt: ") and "not supported" in failed.reason
    assert s.hotplug["data"].reason == failed.reason
    assert s.status == "Running"  # the VM itself is untouched
    # Its attach failed, so nothing is plugged: removing it ends it at once (no node has
    # anything to unplug: it used to stay Detaching for ever), and it may be added again.
    out = await send(stack.nc, c.RemoveVolume(name="hot", volume="data"))
    assert out.events == ["io.virtbus.vm.volume_detach_requested.v1"]
    s = await stack.state("hot")
    assert ("data" in s.volumes, "data" in s.hotplug) == (False, False)
    again = await send(stack.nc, c.AddVolume(name="hot", volume=volume, disk={"name": "data"}))
    assert again.events == ["io.virtbus.vm.volume_attach_requested.v1"]


async def test_hotplugging_another_nodes_claim_says_where_it_is(stack: Stack) -> None:
    """Found by the compatibility measurement: a claim bound to another node than the VMI's
    failed with `persistentvolumeclaim "x" not found`, of a claim that exists. It says where
    the claim is and how to bring it."""
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    await send(stack.nc, seed("near", runStrategy="Always"))
    assert (await stack.until("near", "Running")).node == "node-a"
    await stack.node("node-b")
    await send(stack.nc, c.CreateVolume(name="far", size="16Mi", node="node-b"))
    far = Ref("volume", "default", "far")
    for _ in range(200):  # until node-b has made it (its VolumeReady)
        if any(isinstance(r.envelope.data, m.VolumeReady) for r in await stack.store.read(far)):
            break
        await asyncio.sleep(0.05)
    volume = {"name": "far", "persistentVolumeClaim": {"claimName": "far"}}
    await send(stack.nc, c.AddVolume(name="near", volume=volume, disk={"name": "far"}))
    for _ in range(200):
        if (await stack.state("near")).volumes.get("far") == "Failed":
            break
        await asyncio.sleep(0.05)
    history = [r.envelope.data for r in await stack.store.read(Ref.vm("near"))]
    [failed] = [e for e in history if isinstance(e, m.VolumeAttachFailed)]
    assert (failed.node, failed.reason) == ("node-a", (
        'volume: persistentvolumeclaim "far" is on node node-b, not on node node-a where the '
        "VMI runs (a claim is one node's disk): move it with `virtbus volume move far --to "
        "node-a` while no running VM uses it, then add it again"))  # fmt: skip
