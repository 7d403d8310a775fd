"""A bus, an in-process orchestrator and node workers on libvirt's test driver: the stack most
end-to-end tests drive, and the seed VM they apply to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from paths import SEED
from waits import api_ready, settle

from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events import model as m
from events.manifest import parse_documents, to_commands
from events.names import Ref
from events.state import VMState
from events.work import MigrationPolicy
from orchestrator.app import run_orchestrator
from workers.node import libvirt_test_uri, run_node
from workers.worker import Worker


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
        return (await VMRepository(self.store).get(Ref.vm(name)))[0]

    async def until(self, name: str, status: str, *, within: float = 20) -> VMState:
        s = await self.state(name)
        for _ in range(int(within / 0.05)):
            if s.status == status:
                return s
            await asyncio.sleep(0.05)
            s = await self.state(name)
        pytest.fail(f"{name}: wanted {status}, still {s.status} ({s.reason})")

    async def kinds(self, name: str) -> list[str]:
        return [type(e).__name__ for e in await self.events(name)]

    async def events(self, name: str) -> list[m.Event]:
        return [r.envelope.data for r in await self.store.read(Ref.vm(name))]


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


def pvc_vm(name: str, claim: str, *, also: tuple[str, ...] = (), **spec: Any) -> c.ApplyVM:
    """A VM whose root disk is the claim `claim`; each claim of `also` is one more disk."""
    template = {
        "spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "64Mi"}}},
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": claim}}],
        }
    }  # fmt: skip
    for more in also:
        template["spec"]["domain"]["devices"]["disks"].append({"name": more})
        template["spec"]["volumes"].append(
            {"name": more, "persistentVolumeClaim": {"claimName": more}}
        )
    return c.ApplyVM(name=name, spec={"runStrategy": "Halted", "template": template, **spec})
