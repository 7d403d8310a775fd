"""Node workers on real libvirt (the built-in test driver), end to end through the bus.

The orchestrator runs in-process; workers run in-process or, where they must be killed, as their
own processes. Every assertion reads the log or the processes a user could see (launchers), never
worker internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import api_ready, settle
from nats.aio.client import Client

from bus.client import send
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import commands as c
from events import model as m
from events.manifest import parse_documents, to_commands
from events.names import Ref
from events.state import VMState
from events.work import MigrationPolicy
from orchestrator.app import run_orchestrator
from workers.node import libvirt_test_uri, run_node
from workers.worker import Worker

SEED = Path(__file__).parent.parent / "examples" / "kubevirt-centos7.yaml"


class Stack:
    def __init__(self, nc: Client, url: str, root: Path) -> None:
        self.nc = nc
        self.url = url
        self.root = root
        self.store = EventStore(nc, source="/tests")
        self._nodes: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def provide_seed_volumes(self, node: str) -> None:
        """What the seed VM names must exist on the node: its PVC and its container disk."""
        d = self.node_dir(node)
        claim = d / "volumes" / "default" / "iso-centos7"
        claim.mkdir(parents=True, exist_ok=True)
        (claim / "disk.img").write_bytes(b"\0" * 4096)
        image = d / "images" / "kubevirt_virtio-container-disk"
        image.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image / "disk.qcow2"),
                        "16M"], check=True)  # fmt: skip

    async def node(self, name: str) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_node(self.nc, node=name, uri=None, data_dir=self.root / "nodes", stop=stop),
            name=f"node-{name}",
        )
        self._nodes.append((stop, task))
        await self.until_node(name)

    async def driver_node(self, name: str) -> Worker:
        """A node on the test driver, like `node`, whose worker the test keeps: the test driver's
        domains live behind the worker's own libvirt connection, so only it can list them."""
        node_dir = self.node_dir(name)
        uri = await asyncio.to_thread(libvirt_test_uri, node_dir)
        worker = Worker(self.nc, node=name, uri=uri, data_dir=node_dir, host_root=node_dir / "host")
        stop = asyncio.Event()
        self._nodes.append((stop, asyncio.create_task(worker.run(stop), name=f"node-{name}")))
        await self.until_node(name)
        return worker

    async def until_node(self, name: str) -> None:
        for _ in range(600):
            history = await self.store.read(Ref.node(name))
            if history and isinstance(history[-1].envelope.data, m.NodeRegistered):
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"node {name} never registered")

    async def stop_nodes(self) -> None:
        for stop, task in self._nodes:
            stop.set()
            await task
        self._nodes.clear()

    async def state(self, name: str) -> VMState:
        return (await self.store.load(Ref.vm(name)))[0]

    async def until(self, name: str, status: str, *, within: float = 20) -> VMState:
        s = await self.state(name)
        for _ in range(int(within / 0.05)):
            if s.status == status:
                return s
            await asyncio.sleep(0.05)
            s = await self.state(name)
        pytest.fail(f"{name}: wanted {status}, still {s.status} ({s.reason})")

    async def kinds(self, name: str) -> list[str]:
        return [type(r.envelope.data).__name__ for r in await self.store.read(Ref.vm(name))]


@contextlib.asynccontextmanager
async def driver_stack(
    tmp_path: Path, *, policy: MigrationPolicy | None = None
) -> AsyncIterator[Stack]:
    """A nats-server and an orchestrator; nodes on the test driver join with `Stack.node`."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        stop = asyncio.Event()
        orch = asyncio.create_task(
            run_orchestrator(
                nc, data_dir=tmp_path / "orch", stop=stop, node_grace_s=3, migration_policy=policy
            ),
            name="orchestrator",
        )
        st = Stack(nc, server.url, tmp_path)
        try:
            await api_ready(nc)
            yield st
        finally:
            await settle("the nodes", st.stop_nodes())
            stop.set()
            await settle("the orchestrator", orch)
            await nc.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with driver_stack(tmp_path) as st:
        yield st


def seed(name: str = "centos7", **changes: Any) -> c.ApplyVM:
    doc = parse_documents(SEED.read_text())[0]
    doc["metadata"]["name"] = name
    if "runStrategy" in changes:
        del doc["spec"]["running"]
    doc["spec"].update(changes)
    cmd = to_commands(doc)[0][0]
    assert isinstance(cmd, c.ApplyVM)
    return cmd


def launchers(vm: str) -> list[int]:
    """PIDs of the launcher processes of `vm` (what `ps` shows a user)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"workers.launcher" in cmd and any(a.startswith(f"virt-launcher-{vm}-".encode())
                                                   for a in cmd):  # fmt: skip
                out.append(int(entry))
    return out


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
    assert kinds[-3:] == ["LauncherDeleted", "VMDeleted", "VMUndeleted"]


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
