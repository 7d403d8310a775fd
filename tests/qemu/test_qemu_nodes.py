"""Real libvirt/QEMU nodes on one machine: start, run a guest, live-migrate A->B->A, leave nothing.

Skipped only where root or the QEMU/libvirt packages are missing; without usable KVM the guest
runs under TCG instead.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest
from procs import qemu_pids

from workers.qemunodes import (
    MIGRATION_FLAGS,
    QemuNode,
    kvm_usable,
    migration_params,
    qemu_available,
    tiny_domain_xml,
)

pytestmark = pytest.mark.kvm

NodeFactory = Callable[[str, int], QemuNode]


def daemon_pids() -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if "libvirtd" in argv0 or "qemu-system" in argv0:
                out.append((int(entry), argv0))
    return out


def our_mounts(base: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if str(base) in line]


@pytest.fixture
def kvm() -> bool:
    ok, why = qemu_available()
    if not ok:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip(f"not root (euid {os.geteuid()}): a privileged libvirtd node needs root")
    usable, why = kvm_usable()
    print(f"\nkvm: {usable} ({why})")
    return usable


@pytest.fixture
async def make_node(tmp_path: Path, kvm: bool) -> AsyncIterator[NodeFactory]:
    """Nodes under a short base dir; every one is stopped at teardown, whatever the test did."""
    nodes: list[QemuNode] = []

    def make(name: str, index: int) -> QemuNode:
        node = QemuNode(tmp_path, name, index=index)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop()
    assert not our_mounts(tmp_path)
    assert not [pid for node in nodes for pid in node.pids()]


async def wait_for(cond: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def migrate(name: str, source: QemuNode, target: QemuNode) -> dict[str, Any]:
    """Live-migrate `name` over loopback; returns the completed job's stats read on the target."""
    src = await source.connect()
    dst = await target.connect()
    try:
        dom = await asyncio.to_thread(src.lookupByName, name)
        t0 = time.monotonic()
        await asyncio.to_thread(dom.migrateToURI3, target.uri, migration_params(), MIGRATION_FLAGS)
        wall = time.monotonic() - t0
        moved = await asyncio.to_thread(dst.lookupByName, name)
        assert await asyncio.to_thread(moved.isActive)
        assert await asyncio.to_thread(moved.isPersistent)
        stats: dict[str, Any] = {"wall_s": round(wall, 3)}
        try:
            job = await asyncio.to_thread(moved.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            stats.update({k: job[k] for k in ("downtime", "time_elapsed") if k in job})
        except libvirt.libvirtError as e:
            stats["stats_error"] = str(e)
        with pytest.raises(libvirt.libvirtError):
            await asyncio.to_thread(src.lookupByName, name)  # undefined on the source
        return stats
    finally:
        await asyncio.to_thread(src.close)
        await asyncio.to_thread(dst.close)


async def test_probes_answer_with_reason() -> None:
    for ok, why in (kvm_usable(), qemu_available()):
        assert isinstance(ok, bool)
        assert why


async def test_two_nodes_run_and_live_migrate_a_guest(
    make_node: NodeFactory, kvm: bool, tmp_path: Path
) -> None:
    a, b = make_node("node-a", 0), make_node("node-b", 1)
    await a.start()
    await b.start()
    for n in (a, b):
        print(f"{n.name}: cache {'warm' if n.caps_warm else 'cold'}, timings {n.timings}")
    assert a.host_uuid != b.host_uuid
    assert a.migration_ports != b.migration_ports
    assert b.caps_warm  # a warmed the shared cache (or an earlier run did)
    assert not our_mounts(tmp_path)  # the bind mounts live only in each node's namespace

    name = f"vb-{uuid.uuid4().hex[:10]}"
    conn = await a.connect()
    try:
        t0 = time.monotonic()
        dom = await asyncio.to_thread(conn.defineXML, tiny_domain_xml(name, kvm=kvm))
        await asyncio.to_thread(dom.create)
        print(f"define->running: {time.monotonic() - t0:.3f}s")
        assert await asyncio.to_thread(dom.isActive)
    finally:
        await asyncio.to_thread(conn.close)
    [pid] = qemu_pids(name)
    assert pid in a.pids()
    assert pid not in b.pids()

    there = await migrate(name, a, b)
    print(f"A->B: {there}")
    await wait_for(lambda: bool(qemu_pids(name)) and set(qemu_pids(name)) <= set(b.pids()))
    back = await migrate(name, b, a)
    print(f"B->A: {back}")
    await wait_for(lambda: bool(qemu_pids(name)) and set(qemu_pids(name)) <= set(a.pids()))
    assert not set(qemu_pids(name)) & set(b.pids())

    daemons = {a.pid, b.pid}
    await a.stop()
    await b.stop()
    assert not qemu_pids(name)
    assert not [p for p, _ in daemon_pids() if p in daemons]
    assert not a.pids() and not b.pids()
    assert not our_mounts(tmp_path)


async def test_stop_cleans_up_after_libvirtd_crashed(make_node: NodeFactory, kvm: bool) -> None:
    node = make_node("node-c", 2)
    await node.start()
    name = f"vb-{uuid.uuid4().hex[:10]}"
    conn = await node.connect()
    try:
        dom = await asyncio.to_thread(conn.createXML, tiny_domain_xml(name, kvm=kvm), 0)
        assert await asyncio.to_thread(dom.isActive)
    finally:
        await asyncio.to_thread(conn.close)
    assert node.pid is not None
    os.kill(node.pid, 9)  # a failed test or crash: the guest outlives its daemon
    await asyncio.sleep(0.2)
    assert qemu_pids(name)
    await node.stop()
    assert not qemu_pids(name)
    assert not node.pids()
