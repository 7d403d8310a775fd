"""One real-QEMU stack for every KVM test file: a fresh nats-server, an in-process orchestrator,
one or more `QemuNode`s (a real libvirtd each, in its own mount namespace) and a node worker per
node, in-process or (to be SIGKILLed) as its own process.

Assertions read the event log, /proc or libvirt through a connection of the test's own, never
worker internals. Each test file gives its nodes their own index: the index picks the node's
migration and VNC port range, so files never clash.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import libvirt
import nats
import pytest
from nats.aio.client import Client
from paths import SEED
from waits import settle

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
from workers.qemunodes import SAME_MACHINE, QemuNode
from workers.vmnet import VMNetwork
from workers.volumes import claim_dir, image_dir
from workers.worker import Worker

VIRTBUS = Path(sys.executable).parent / "virtbus"


async def wait_for(cond: Callable[[], bool], *, within: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


def seed_doc(name: str = "centos7") -> dict[str, Any]:
    """A copy of the seed manifest's VM document, renamed when asked."""
    doc = copy.deepcopy(parse_documents(SEED.read_text())[0])
    doc["metadata"]["name"] = name
    return doc


def apply(doc: dict[str, Any]) -> c.ApplyVM:
    cmd = to_commands(doc)[0][0]
    assert isinstance(cmd, c.ApplyVM)
    return cmd


def short_grace(doc: dict[str, Any], seconds: int = 2) -> dict[str, Any]:
    """No guest OS answers ACPI: keep the destroy-after-grace short."""
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = seconds
    return doc


class QemuStack:
    def __init__(self, nc: Client, url: str, base: Path) -> None:
        self.nc = nc
        self.url = url
        self.base = base
        self.nodes: dict[str, QemuNode] = {}
        self.store = EventStore(nc, source="/tests/qemu")
        self._tasks: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self.workers: dict[str, Worker] = {}  # the in-process ones, for their internals
        self.vm_network = False  # in-process workers make their VMs' network (workers/vmnet.py)

    # --- the first node, for one-node tests ------------------------------------------------------

    @property
    def node(self) -> QemuNode:
        return next(iter(self.nodes.values()))

    @property
    def data_dir(self) -> Path:
        return self.node_dir(self.node.name)

    @property
    def host_root(self) -> Path:
        return self.data_dir / "host"

    def node_dir(self, name: str) -> Path:
        return self.base / "data" / name  # the layout `python -m workers --data-dir` uses

    # --- workers ---------------------------------------------------------------------------------

    async def start_worker(self, name: str, *, process: bool = False, crash_at: str = "") -> None:
        """`crash_at`: the worker process dies at that point (`bus/crashpoints.py`)."""
        uri, data = self.nodes[name].uri, self.node_dir(name)
        if process:
            log = (self.base / f"worker-{name}.log").open("ab")
            self._procs[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers", "--node", name, "--libvirt", uri,
                "--data-dir", str(self.base / "data"), "--server", self.url,
                "--shared-storage", "--migration-address", SAME_MACHINE.address,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "VIRTBUS_CRASH_AT": crash_at},
            )  # fmt: skip
            log.close()
        else:
            worker = Worker(self.nc, node=name, uri=uri, data_dir=data, host_root=data / "host",
                            migration=SAME_MACHINE, vm_network=self.vm_network)  # fmt: skip
            self.workers[name] = worker
            stop = asyncio.Event()
            self._tasks[name] = (stop, asyncio.create_task(worker.run(stop), name=f"worker-{name}"))
        await self.until_registered(name)

    async def kill_worker(self, name: str) -> None:
        """SIGKILL a worker process, as a crash would end it."""
        proc = self._procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def restart_worker(self, name: str, *, crash_at: str = "") -> None:
        """The worker process stopped (SIGTERM, as a user would) and started again."""
        proc = self._procs.pop(name)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await settle(f"worker {name}", proc.wait())
        await self.start_worker(name, process=True, crash_at=crash_at)

    async def crashed(self, *names: str, within: float = 60) -> tuple[str, int]:
        """Until the worker process of one of `names` has ended (at its crash point): which, and
        its exit code."""
        waits = {asyncio.ensure_future(self._procs[n].wait()): n for n in names}
        done, pending = await asyncio.wait(waits, timeout=within, return_when="FIRST_COMPLETED")
        for fut in pending:
            fut.cancel()
        if not done:
            pytest.fail(f"no worker of {names} reached its crash point within {within}s")
        fut = done.pop()
        del self._procs[waits[fut]]
        return waits[fut], fut.result()

    async def stop_workers(self) -> None:
        for stop, _ in self._tasks.values():
            stop.set()
        for name, (_, task) in list(self._tasks.items()):
            await settle(f"worker {name}", task)
        self._tasks.clear()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await settle("a worker process", proc.wait())
        self._procs.clear()

    def _alive(self) -> None:
        for name, (_, task) in self._tasks.items():
            if task.done():  # fail fast, with the worker's own error
                pytest.fail(f"worker {name} ended: {task.exception()!r}")

    async def until_registered(self, name: str) -> None:
        since = len(await self.store.read(Ref.node(name)))
        for _ in range(600):
            self._alive()
            history = await self.store.read(Ref.node(name))
            if len(history) > since and isinstance(history[-1].envelope.data, m.NodeRegistered):
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{name} never registered")

    # --- volumes ---------------------------------------------------------------------------------

    def provide_seed_volumes(self, node: str | None = None) -> None:
        """The seed VM's PVC (a small raw file) and containerDisk (a small qcow2) on the node."""
        data = self.node_dir(node) if node else self.data_dir
        claim = claim_dir(data, "default", "iso-centos7")
        claim.mkdir(parents=True, exist_ok=True)
        (claim / "disk.img").write_bytes(b"\0" * 65536)
        image = image_dir(data, "kubevirt/virtio-container-disk")
        image.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image / "disk.qcow2"),
                        "16M"], check=True)  # fmt: skip

    def provide_claim(self, claim: str, size: int = 1 << 20) -> Path:
        """A PVC on the first node: a small raw file in the claim's directory."""
        d = claim_dir(self.data_dir, "default", claim)
        d.mkdir(parents=True, exist_ok=True)
        (d / "disk.img").write_bytes(b"\0" * size)
        return d / "disk.img"

    # --- reading what happened -------------------------------------------------------------------

    async def state(self, name: str) -> VMState:
        return (await VMRepository(self.store).get(Ref.vm(name)))[0]

    async def events(self, name: str) -> list[m.Event]:
        return [r.envelope.data for r in await self.store.read(Ref.vm(name))]

    async def until(self, name: str, status: str, *, within: float = 30) -> VMState:
        deadline = time.monotonic() + within
        while True:
            self._alive()
            s = await self.state(name)
            if s.status == status:
                return s
            if time.monotonic() > deadline:
                pytest.fail(f"{name}: wanted {status}, still {s.status} ({s.reason})")
            await asyncio.sleep(0.05)

    async def until_event(
        self, name: str, kind: type[m.Event], *, after: int = 0, within: float = 30
    ) -> list[m.Event]:
        """The VM's events from index `after` on, once one of them is a `kind`."""
        deadline = time.monotonic() + within
        while True:
            self._alive()
            events = (await self.events(name))[after:]
            if any(isinstance(e, kind) for e in events):
                return events
            if time.monotonic() > deadline:
                names = [type(e).__name__ for e in events]
                pytest.fail(f"{name}: no {kind.__name__} within {within}s; got {names}")
            await asyncio.sleep(0.05)

    async def virtbus(self, *args: str) -> tuple[int, str, str]:
        """Run the CLI as a user would; its exit code, stdout and stderr."""
        proc = await asyncio.create_subprocess_exec(
            str(VIRTBUS), *args, "--server", self.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def domains(self, node: str) -> dict[str, int]:
        """Domain name -> libvirt state on `node`, through a connection of the test's own."""

        def read() -> dict[str, int]:
            conn = libvirt.open(self.nodes[node].uri)
            try:
                return {d.name(): d.state()[0] for d in conn.listAllDomains(0)}
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def domain_xml(self, domain: str, node: str | None = None) -> str:
        """The running domain's XML, through a libvirt connection of the test's own."""

        def read() -> str:
            conn = libvirt.open(self.nodes[node].uri if node else self.node.uri)
            try:
                return str(conn.lookupByName(domain).XMLDesc(0))
            finally:
                conn.close()

        return await asyncio.to_thread(read)


@contextlib.asynccontextmanager
async def qemu_stack(
    base: Path, *, nodes: dict[str, int], processes: frozenset[str] = frozenset(),
    policy: MigrationPolicy | None = None, vm_network: bool = False,
) -> AsyncIterator[QemuStack]:  # fmt: skip
    """The stack with `nodes` (name -> port-range index); workers of `processes` run as their
    own processes. `base` must be short: a node's unix socket path must fit 108 bytes."""
    async with NatsServer(data_dir=base / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        orch_stop = asyncio.Event()
        orch = asyncio.create_task(
            run_orchestrator(
                nc, data_dir=base / "orch", stop=orch_stop, node_grace_s=5, migration_policy=policy
            ),
            name="orchestrator",
        )
        st = QemuStack(nc, server.url, base)
        st.vm_network = vm_network
        try:
            for name, index in nodes.items():
                st.nodes[name] = node = QemuNode(base, name, index=index)
                t0 = time.monotonic()
                await node.start()
                cache = "warm" if node.caps_warm else "cold"
                print(f"\nQemuNode {name} up in {time.monotonic() - t0:.2f}s (caps cache {cache})")
            for name in nodes:
                await st.start_worker(name, process=name in processes)
            yield st
        finally:
            try:
                await st.stop_workers()  # the workers end before their libvirtd does
            finally:
                for name, node in st.nodes.items():
                    await node.stop()
                    # The VM networks of the domains the node's stop destroyed (workers/vmnet).
                    await VMNetwork(st.node_dir(name) / "net", node=name).sweep()
                orch_stop.set()
                await settle("the orchestrator", orch)
                await nc.close()
