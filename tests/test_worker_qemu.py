"""The node worker end to end on real QEMU/KVM: a libvirtd node, the bus, the orchestrator.

A fresh nats-server and an in-process orchestrator (as in test_worker.py), a `QemuNode` (a real
libvirtd in its own mount namespace) and a `Worker` run in-process against the node's URI. Every
assertion reads the event log or /proc (the QEMU process a user would see with `ps`), never worker
internals. The guests have no OS: nothing boots, so ACPI shutdown is ignored and a stop ends in a
destroy after the grace period. Skipped only where root, /dev/kvm or QEMU/libvirt are missing.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import qemu_pids
from nats.aio.client import Client

from events import commands as c
from events import model as m
from events.names import Ref
from events.provision import provision
from events.server import NatsServer
from events.state import VMState, fold
from events.store import EventStore
from orchestrator.app import run_orchestrator
from orchestrator.client import send
from orchestrator.manifest import parse_documents, to_commands
from workers.qemunodes import QemuNode
from workers.volumes import claim_dir, image_dir
from workers.worker import Worker

pytestmark = pytest.mark.kvm

SEED = Path(__file__).parent.parent / "examples" / "kubevirt-centos7.yaml"
NODE = "node-a"
NODE_INDEX = 7  # its own VNC/migration port range, away from test_qemu_nodes' nodes 0..2
# libvirt's VIR_DOMAIN_EVENT_STOPPED details, in the words the worker reports them
LIBVIRT_STOP_REASONS = {
    "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"
}  # fmt: skip


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
    def __init__(
        self, nc: Client, node: QemuNode, data_dir: Path, worker: asyncio.Task[None]
    ) -> None:
        self.nc = nc
        self.node = node
        self.data_dir = data_dir
        self.host_root = data_dir / "host"
        self.worker = worker
        self.store = EventStore(nc, source="/tests/qemu")

    def provide_seed_volumes(self) -> None:
        """The seed VM's PVC (a small raw file) and containerDisk (a small qcow2) on the node."""
        claim = claim_dir(self.data_dir, "default", "iso-centos7")
        claim.mkdir(parents=True, exist_ok=True)
        (claim / "disk.img").write_bytes(b"\0" * 65536)
        image = image_dir(self.data_dir, "kubevirt/virtio-container-disk")
        image.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image / "disk.qcow2"),
                        "16M"], check=True)  # fmt: skip

    def _alive(self) -> None:
        if self.worker.done():  # fail fast, with the worker's own error
            pytest.fail(f"the worker ended: {self.worker.exception()!r}")

    async def until_registered(self) -> None:
        for _ in range(400):
            self._alive()
            history = await self.store.read(Ref.node(NODE))
            if history and isinstance(history[-1].envelope.data, m.NodeRegistered):
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{NODE} never registered")

    async def state(self, name: str) -> VMState:
        return (await self.store.load(Ref.vm(name)))[0]

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


@pytest.fixture
async def qstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QemuStack]:
    base = tmp_path_factory.mktemp("wq")  # short: the node's unix socket path must fit 108 bytes
    async with NatsServer(data_dir=base / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        orch_stop = asyncio.Event()
        orch = asyncio.create_task(
            run_orchestrator(nc, data_dir=base / "orch", stop=orch_stop, node_grace_s=5),
            name="orchestrator",
        )
        node = QemuNode(base, NODE, index=NODE_INDEX)
        try:
            t0 = time.monotonic()
            await node.start()
            cache = "warm" if node.caps_warm else "cold"
            print(f"\nQemuNode {NODE} up in {time.monotonic() - t0:.2f}s (caps cache {cache})")
            data_dir = base / "data"
            worker = Worker(nc, node=NODE, uri=node.uri, data_dir=data_dir,
                            host_root=data_dir / "host")  # fmt: skip
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop), name=f"worker-{NODE}")
            try:
                st = QemuStack(nc, node, data_dir, task)
                await st.until_registered()
                yield st
            finally:
                stop.set()
                await task  # the worker ends before its libvirtd does
        finally:
            try:
                await node.stop()
            finally:
                orch_stop.set()
                await orch
                await nc.close()


async def test_seed_vm_lifecycle_on_real_qemu(qstack: QemuStack) -> None:
    qstack.provide_seed_volumes()
    await send(qstack.nc, apply(short_grace(seed_doc())))
    t0 = time.monotonic()
    await send(qstack.nc, c.StartVM(name="centos7"))
    s = await qstack.until("centos7", "Running")
    print(f"start -> Running: {time.monotonic() - t0:.2f}s")
    assert (s.phase, s.node) == ("Running", NODE)
    [pid] = qemu_pids("default_centos7")  # one real QEMU process runs the VM
    assert pid in qstack.node.pids()  # and it is this node's guest
    disk = qstack.host_root / "data" / "disk.img"  # hostDisk DiskOrCreate, made sparse
    assert disk.stat().st_size == 30 << 30
    assert disk.stat().st_blocks * 512 < 1 << 20

    seen = len(await qstack.events("centos7"))
    await send(qstack.nc, c.PauseVM(name="centos7"))
    await qstack.until("centos7", "Paused")
    paused = await qstack.until_event("centos7", m.DomainPaused, after=seen)
    [ev] = [e for e in paused if isinstance(e, m.DomainPaused)]
    assert (ev.node, ev.reason) == (NODE, "user")
    assert qemu_pids("default_centos7") == [pid]  # paused, not gone

    seen += len(paused)
    await send(qstack.nc, c.UnpauseVM(name="centos7"))
    s = await qstack.until("centos7", "Running")
    assert not s.paused
    resumed = await qstack.until_event("centos7", m.DomainResumed, after=seen)
    assert [e.node for e in resumed if isinstance(e, m.DomainResumed)] == [NODE]
    assert qemu_pids("default_centos7") == [pid]

    seen += len(resumed)
    t0 = time.monotonic()
    await send(qstack.nc, c.StopVM(name="centos7"))
    await qstack.until("centos7", "Stopped")
    took = time.monotonic() - t0
    print(f"stop -> Stopped: {took:.2f}s (grace 2 s, then destroy)")
    stopped = [e for e in (await qstack.events("centos7"))[seen:] if isinstance(e, m.DomainStopped)]
    assert [(e.node, e.reason) for e in stopped] == [(NODE, "destroyed")]  # ACPI was ignored
    assert 2 <= took < 15
    await wait_for(lambda: not qemu_pids("default_centos7"), within=5, what="QEMU gone")
    kinds = [type(e).__name__ for e in await qstack.events("centos7")]
    print(f"events: {kinds}")
    # Exactly what happened, once each: no echo of libvirt starting QEMU's CPUs as a "resume".
    assert [k for k in kinds if k.startswith("Domain")] == [
        "DomainDefined", "DomainStarted", "DomainPaused", "DomainResumed", "DomainStopped"
    ]  # fmt: skip
    assert kinds[-1] == "VMStopped"


async def test_always_restarts_a_vm_whose_qemu_was_killed(qstack: QemuStack) -> None:
    qstack.provide_seed_volumes()
    doc = short_grace(seed_doc("always"))
    del doc["spec"]["running"]
    doc["spec"]["runStrategy"] = "Always"
    await send(qstack.nc, apply(doc))  # Always: it starts by itself
    first = await qstack.until("always", "Running")
    [old] = qemu_pids("default_always")
    seen = len(await qstack.events("always"))

    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    after = await qstack.until_event("always", m.DomainStopped, after=seen)
    [stopped] = [e for e in after if isinstance(e, m.DomainStopped)]
    print(f"libvirt's reason for the killed QEMU: {stopped.reason!r}")
    assert stopped.reason in LIBVIRT_STOP_REASONS
    assert stopped.node == NODE

    at = seen + after.index(stopped)
    restarted = await qstack.until_event("always", m.DomainStarted, after=at)
    s = await qstack.until("always", "Running")
    print(f"kill -> Running again: {time.monotonic() - t0:.2f}s; "
          f"events {[type(e).__name__ for e in restarted]}")  # fmt: skip
    assert s.node == NODE
    assert s.vmi_uid != first.vmi_uid  # a new instance, not the old one revived
    await wait_for(lambda: len(qemu_pids("default_always")) == 1, what="one QEMU again")
    [new] = qemu_pids("default_always")
    assert new != old
    assert new in qstack.node.pids()


async def test_a_missing_claim_fails_the_start_with_no_qemu(qstack: QemuStack) -> None:
    qstack.provide_seed_volumes()  # everything but the claim this VM names
    doc = seed_doc("nopvc")
    doc["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "gone"
    await send(qstack.nc, apply(doc))
    await send(qstack.nc, c.StartVM(name="nopvc"))
    await qstack.until_event("nopvc", m.VMStartFailed)
    history = [r.envelope for r in await qstack.store.read(Ref.vm("nopvc"))]
    first = next(env for env in history if isinstance(env.data, m.VMStartFailed))
    failed = first.data
    assert isinstance(failed, m.VMStartFailed)
    assert failed.status == "ErrorPvcNotFound"
    assert 'persistentvolumeclaim "gone" not found' in failed.reason
    assert failed.node == NODE
    # As the failure lands, the VM shows KubeVirt's status.
    assert fold(env for env in history if env.version <= first.version).status == failed.status
    await asyncio.sleep(1)  # `virtctl start` made it Always: a retry may land meanwhile
    events = await qstack.events("nopvc")
    retries = [e for e in events if isinstance(e, m.VMStartFailed)]
    print(f"start attempts failed: {len(retries)}; {[type(e).__name__ for e in events]}")
    assert {e.status for e in retries} == {"ErrorPvcNotFound"}  # each attempt, the same cause
    assert not any(isinstance(e, m.DomainStarted | m.LauncherCreated) for e in events)
    assert qemu_pids("default_nopvc") == []  # no QEMU ever ran for it


async def test_a_crash_soon_after_a_destroying_stop_is_still_reported(qstack: QemuStack) -> None:
    """The ACPI stop that never came must not leave an expectation that hides the next crash."""
    qstack.provide_seed_volumes()
    await send(qstack.nc, apply(short_grace(seed_doc("again"))))
    await send(qstack.nc, c.StartVM(name="again"))
    await qstack.until("again", "Running")
    await send(qstack.nc, c.StopVM(name="again"))  # ignored ACPI, destroyed after 2 s
    await qstack.until("again", "Stopped")
    stopped_at = time.monotonic()
    await send(qstack.nc, c.StartVM(name="again"))  # Always again, like `virtctl start`
    await qstack.until("again", "Running")
    seen = len(await qstack.events("again"))
    [old] = qemu_pids("default_again")
    os.kill(old, signal.SIGKILL)
    assert time.monotonic() - stopped_at < 10  # within the worker's window for expected events
    after = await qstack.until_event("again", m.DomainStopped, after=seen, within=10)
    [stopped] = [e for e in after if isinstance(e, m.DomainStopped)]
    assert stopped.reason in LIBVIRT_STOP_REASONS - {"destroyed", "shutdown"}
    await qstack.until("again", "Running")  # and Always brought it back
    await wait_for(lambda: len(qemu_pids("default_again")) == 1, what="one QEMU again")
    assert qemu_pids("default_again") != [old]
