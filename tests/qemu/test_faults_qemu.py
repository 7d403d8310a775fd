"""A node worker killed mid-operation, and libvirtd restarted under a live worker, on real QEMU:
afterwards the log and libvirt agree exactly.

The workers run as processes of their own with `VIRTBUS_CRASH_AT` (`bus/crashpoints.py`): each
dies (as SIGKILL would) at the worst moment of one operation, `reporting:<Event>`, when libvirt
has acted and the log has not been told, or `reported:<Event>`, when the log has been told and
the work not acknowledged; the guest outlives it (libvirtd owns QEMU). Started again, the
worker's sync loop and the work redelivered to it must finish the operation once; after a
`reported:` death the test waits for that redelivery (the ack wait, 15 s) and counts again.
After each fault the domains every node's libvirt has, and their states, are compared with what
the log's fold says runs where. One VM, one stack, the faults in turn: two or three minutes in
all. (A volume move touches no libvirt: its faults are in `tests/control/test_crashpoints.py`.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from procs import qemu_pids
from qemustack import QemuStack, apply, qemu_stack, seed_doc, short_grace

from bus.client import send
from bus.crashpoints import EXIT_CODE
from bus.vms import VMRepository
from events import commands as c
from events import model as m
from events.names import WORK_STREAM
from workers.hypervisor import domain_name

pytestmark = pytest.mark.kvm

A, B = "node-a", "node-b"
NODES = {A: 40, B: 41}  # port ranges of their own, away from the other KVM test files
VM = "faulty"
RUNNING, PAUSED = 1, 3  # libvirt.VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED


@pytest.fixture
async def fstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QemuStack]:
    base = tmp_path_factory.mktemp("fq")
    async with qemu_stack(base, nodes=NODES, processes=frozenset(NODES)) as st:
        st.provide_seed_volumes(A)
        st.provide_seed_volumes(B)
        yield st


async def the_logs_domains(st: QemuStack) -> dict[str, dict[str, int]]:
    """Node -> the domains the log's fold says run there, with the libvirt state it implies."""
    want: dict[str, dict[str, int]] = {n: {} for n in st.nodes}
    for ref, s in (await VMRepository(st.store).all(verify=False)).items():
        if s.phase == "Running" and s.node:
            want[s.node][domain_name(ref)] = PAUSED if s.paused else RUNNING
    return want


async def agree(st: QemuStack, after: str, *, within: float = 30) -> None:
    """Until libvirt on every node holds exactly the domains the log says, in its states; and
    one QEMU process for each."""
    deadline = time.monotonic() + within
    while True:
        want = await the_logs_domains(st)
        have = {n: await st.domains(n) for n in st.nodes}
        pids = {d: len(qemu_pids(d)) for doms in want.values() for d in doms}
        if have == want and set(pids.values()) <= {1}:
            return
        if time.monotonic() > deadline:
            assert (have, pids) == (want, dict.fromkeys(pids, 1)), f"after {after}"
        await asyncio.sleep(0.1)


async def killed_at(st: QemuStack, point: str, cmd: c.Command, *, on: tuple[str, ...]) -> str:
    """The workers of `on` armed with `point`, `cmd` sent, one of them dead there, then all
    started again unarmed: the one that died."""
    for node in on:
        await st.restart_worker(node, crash_at=point)
    await send(st.nc, cmd)
    node, code = await st.crashed(*on)
    assert code == EXIT_CODE, (point, node)
    await st.start_worker(node, process=True)
    for other in set(on) - {node}:
        await st.restart_worker(other)
    return node


async def redone(st: QemuStack, node: str, *, within: float = 60) -> None:
    """Until `node`'s work consumer has nothing unacknowledged: the item its dead worker held has
    come again (JetStream redelivers it after the worker's ack wait, 15 s) and been done."""
    js, deadline = st.nc.jetstream(), time.monotonic() + within
    while True:
        info = await js.consumer_info(WORK_STREAM, f"worker-{node}")
        if info.num_ack_pending == info.num_pending == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{node}: work still unacknowledged after {within}s: {info}")
        await asyncio.sleep(0.1)


async def settled(
    st: QemuStack, kinds: tuple[type[m.Event], ...], *, after: int, what: str, redo: str = ""
) -> Counter[str]:
    """Until one of `kinds` is in the VM's log past index `after` and libvirt agrees with the
    log (and, with `redo`, that node's redelivered work is done and libvirt still agrees): the
    VM's events since, counted by kind."""
    await st.until_event(VM, kinds, after=after, within=90)  # type: ignore[arg-type]
    await agree(st, what)
    if redo:
        await redone(st, redo)
        await agree(st, f"{what}, redelivered")
    return Counter(type(e).__name__ for e in (await st.events(VM))[after:])


async def test_workers_killed_mid_operation_leave_libvirt_as_the_log_says(
    fstack: QemuStack,
) -> None:
    st = fstack
    await send(st.nc, apply(short_grace(seed_doc(VM))))
    # Mid-start: the guest runs, the log does not know (on either node: the scheduler's pick).
    n = len(await st.events(VM))
    died = await killed_at(st, "reporting:DomainStarted", c.StartVM(name=VM), on=(A, B))
    s = await st.until(VM, "Running", within=90)
    kinds = await settled(st, (m.DomainStarted,), after=n, what="a start")
    assert (s.node, kinds["DomainStarted"], kinds["DomainStopped"]) == (died, 1, 0)

    # Mid-stop: the guest is gone, the log does not know.
    n = len(await st.events(VM))
    await killed_at(st, "reporting:DomainStopped", c.StopVM(name=VM), on=(died,))
    await st.until(VM, "Stopped", within=90)
    kinds = await settled(st, (m.DomainStopped,), after=n, what="a stop")
    assert kinds["DomainStopped"] == 1, kinds

    await send(st.nc, c.StartVM(name=VM))
    await st.until(VM, "Running", within=90)
    # Mid-migration, the target: prepared, the log not told; then the source: the guest moved,
    # the log not told. Then both killed after telling the log: the work redelivered to them
    # finds the migration past its step, and the guest where it went.
    for point, target in (("reporting:MigrationTargetReady", True),
                          ("reporting:MigrationSucceeded", False),
                          ("reported:MigrationTargetReady", True),
                          ("reported:MigrationSucceeded", False)):  # fmt: skip
        n = len(await st.events(VM))
        source = (await st.state(VM)).node
        to = B if source == A else A
        cmd: c.Command = c.MigrateVM(name=VM, target_node=to)
        died = await killed_at(st, point, cmd, on=(to if target else source,))
        redo = died if point.startswith("reported:") else ""
        kinds = await settled(st, (m.MigrationSucceeded, m.MigrationFailed), after=n, what=point,
                              redo=redo)  # fmt: skip
        s = await st.until(VM, "Running", within=60)
        print(f"{point}: {dict(kinds)}; on {s.node}")
        assert kinds["MigrationSucceeded"] + kinds["MigrationFailed"] == 1, (point, kinds)
        assert s.node == (to if kinds["MigrationSucceeded"] else source), point
        if redo:  # the log was told: the migration went on and succeeded
            assert (kinds["MigrationTargetReady"], kinds["MigrationSucceeded"]) == (1, 1), kinds

    # Mid-snapshot: the copies made, the log not told; then told, the work not acknowledged.
    node = (await st.state(VM)).node
    for point, snap in (
        ("reporting:SnapshotSucceeded", "s1"),
        ("reported:SnapshotSucceeded", "s2"),
    ):
        n = len(await st.events(VM))
        await killed_at(st, point, c.SnapshotVM(name=VM, snapshot=snap), on=(node,))
        redo = node if point.startswith("reported:") else ""
        kinds = await settled(st, (m.SnapshotSucceeded, m.SnapshotFailed), after=n, what=point,
                              redo=redo)  # fmt: skip
        s = await st.state(VM)
        assert (kinds["SnapshotSucceeded"], kinds["SnapshotFailed"]) == (1, 0), (point, kinds)
        assert (s.snapshots[snap].phase, s.snapshotting, s.status) == ("Succeeded", "", "Running")

    # libvirtd restarted under a live worker: the guest runs on, and the worker still acts on it.
    await st.nodes[node].restart_daemon()
    await agree(st, "libvirtd's restart")
    n = len(await st.events(VM))
    await send(st.nc, c.StopVM(name=VM))
    await st.until(VM, "Stopped", within=60)
    kinds = await settled(st, (m.DomainStopped,), after=n, what="a stop after libvirtd's restart")
    assert kinds["DomainStopped"] == 1, kinds

    # Killed after the report and before the work is acknowledged: the work comes again to the
    # restarted worker, which finds libvirt already as asked, and reports nothing twice.
    for point, cmd, phase, kind in (
        ("reported:DomainStarted", c.StartVM(name=VM), "Running", m.DomainStarted),
        ("reported:DomainStopped", c.StopVM(name=VM), "Stopped", m.DomainStopped),
    ):
        n = len(await st.events(VM))
        on = (A, B) if phase == "Running" else ((await st.state(VM)).node,)
        died = await killed_at(st, point, cmd, on=on)
        kinds = await settled(st, (kind,), after=n, what=point, redo=died)
        assert (await st.state(VM)).status == phase, point
        assert (kinds["DomainStarted"], kinds["DomainStopped"]) == (
            (1, 0) if kind is m.DomainStarted else (0, 1)), (point, kinds)  # fmt: skip
