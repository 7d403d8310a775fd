"""The node worker end to end on real QEMU/KVM: a libvirtd node, the bus, the orchestrator.

The one-node stack of `qemustack.py`: a fresh nats-server, an in-process orchestrator, a
`QemuNode` (a real libvirtd in its own mount namespace) and an in-process `Worker` on it. Every
assertion reads the event log or /proc (the QEMU process a user would see with `ps`), never worker
internals. The guests have no OS: nothing boots, so ACPI shutdown is ignored and a stop ends in a
destroy after the grace period. Skipped only where root, /dev/kvm or QEMU/libvirt are missing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
from procs import qemu_pids
from qemustack import QemuStack, apply, qemu_stack, seed_doc, short_grace, wait_for

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref
from events.state import fold

pytestmark = pytest.mark.kvm

NODE = "node-a"
NODE_INDEX = 7  # its own VNC/migration port range, away from test_qemu_nodes' nodes 0..2
# libvirt's VIR_DOMAIN_EVENT_STOPPED details, in the words the worker reports them
LIBVIRT_STOP_REASONS = {
    "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"
}  # fmt: skip


@pytest.fixture
async def qstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QemuStack]:
    async with qemu_stack(tmp_path_factory.mktemp("wq"), nodes={NODE: NODE_INDEX}) as st:
        yield st


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
    assert kinds[-2:] == ["VMStopped", "IPReleased"]  # its address back in the pool, last


async def test_a_forced_stop_cuts_a_graceful_stop_short(qstack: QemuStack) -> None:
    """`stop --force` while a graceful stop waits out its grace: the force item queues behind it,
    yet the domain goes at once; a delete meanwhile (also a forced stop item) does not cut it."""
    qstack.provide_seed_volumes()
    await send(qstack.nc, apply(short_grace(seed_doc("slow"), seconds=60)))
    await send(qstack.nc, c.StartVM(name="slow"))
    await qstack.until("slow", "Running")
    t0 = time.monotonic()
    await send(qstack.nc, c.StopVM(name="slow"))
    await asyncio.sleep(2)  # the graceful stop is waiting for an ACPI shutdown that never comes
    await send(qstack.nc, c.StopVM(name="slow", force=True))
    await qstack.until("slow", "Stopped")
    took = time.monotonic() - t0
    print(f"stop, then stop --force -> Stopped: {took:.2f}s (grace 60 s)")
    assert took < 20
    stopped = [e for e in await qstack.events("slow") if isinstance(e, m.DomainStopped)]
    assert [e.reason for e in stopped] == ["destroyed"]

    await send(qstack.nc, apply(short_grace(seed_doc("slow"), seconds=6)))
    await send(qstack.nc, c.StartVM(name="slow"))
    await qstack.until("slow", "Running")
    t0 = time.monotonic()
    await send(qstack.nc, c.StopVM(name="slow"))
    await asyncio.sleep(1)
    await send(qstack.nc, c.DeleteVM(name="slow"))
    await wait_for(lambda: not qemu_pids("default_slow"), within=30, what="QEMU gone")
    took = time.monotonic() - t0
    print(f"stop, then delete -> QEMU gone: {took:.2f}s (grace 6 s)")
    assert took >= 6  # the delete waited for the grace, as before


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
