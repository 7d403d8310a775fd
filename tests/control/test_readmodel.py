"""ReadModel against a real nats-server: catch-up, restart, rebuild, live follow, atomicity.

The stream is shared with every other test of the session, so assertions look only at this
module's uniquely named VMs and nodes, and positions are compared with the stream's own last seq.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client

from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import model as m
from events.names import EVENTS_STREAM, Ref
from orchestrator import readmodel
from orchestrator.readmodel import ReadModel

SPEC = {"runStrategy": "Always", "template": {"spec": {"domain": {"cpu": {"cores": 1}}}}}
CREATED = m.VMCreated(spec=SPEC, run_strategy="Always", labels={"app": "t"})
REGISTERED = m.NodeRegistered(hypervisor="qemu", libvirt_uri="qemu:///system", cpus=4,
                              memory_bytes=8 * 2**30, kvm=True)  # fmt: skip


def running(node: str) -> list[m.Event]:
    return [m.VMStartRequested(), m.VMScheduled(node=node, vmi_uid="u1"), m.VMRunning(node=node)]


@pytest.fixture
async def model(tmp_path: Path, store: EventStore) -> AsyncIterator[ReadModel]:
    # verify=False: the shared stream may hold test_store's deliberately forged event, and a
    # replay from seq 1 with chain checks would (rightly) refuse it.
    async with ReadModel(tmp_path / "read.db", store, verify=False) as rm:
        yield rm


async def last_seq(nc: Client) -> int:
    return int((await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq)


async def raw(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the file with plain sqlite3 (a separate connection, in a thread)."""

    def read() -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as db:
            return list(db.execute(sql, args))

    return await asyncio.to_thread(read)


async def test_catch_up_folds_vms_and_nodes_up_to_the_stream_end(
    model: ReadModel, store: EventStore, nc: Client, vm: Ref
) -> None:
    node = Ref.node(f"node-{uuid.uuid4().hex[:8]}")
    await store.append(node, [REGISTERED, m.NodeCordoned(reason="maintenance")], expected_version=0)
    await store.append(vm, [CREATED, *running(node.name)], expected_version=0)
    assert await model.catch_up() >= 5
    s = await model.vm(vm.namespace, vm.name)
    assert s is not None
    assert (s.status, s.phase, s.node, s.ready, s.version) == ("Running", "Running", node.name,
                                                               True, 4)  # fmt: skip
    assert s.labels == {"app": "t"}
    [n] = [n for n in await model.nodes() if n.name == node.name]
    assert (n.status, n.cordoned, n.cpus, n.version) == ("Ready", True, 4, 2)
    assert await model.position() == await last_seq(nc)
    assert await model.catch_up() == 0
    assert await model.position() == await last_seq(nc)
    assert [s.name for s in await model.vms(vm.namespace) if s.name == vm.name] == [vm.name]
    assert await model.vms("no-such-namespace") == []


async def test_the_file_is_in_wal_mode_and_rows_match_their_columns(
    model: ReadModel, store: EventStore, vm: Ref
) -> None:
    await store.append(vm, [CREATED, m.VMStartRequested()], expected_version=0)
    await model.catch_up()
    assert await raw(model.path, "PRAGMA journal_mode") == [("wal",)]
    rows = await raw(model.path, "SELECT version, status, phase, node FROM vms WHERE name = ?",
                     vm.name)  # fmt: skip
    assert rows == [(2, "Starting", "Pending", "")]


async def test_other_aggregates_are_skipped_but_move_the_position(
    model: ReadModel, store: EventStore, nc: Client
) -> None:
    rs = Ref.of("rs", f"rs-{uuid.uuid4().hex[:8]}")
    await store.append(rs, [m.ReplicaSetCreated(spec=SPEC, replicas=2)], expected_version=0)
    await model.catch_up()
    assert await model.position() == await last_seq(nc)
    assert await model.vm(rs.namespace, rs.name) is None


async def test_reopening_keeps_rows_and_position(
    tmp_path: Path, store: EventStore, nc: Client, vm: Ref
) -> None:
    path = tmp_path / "read.db"
    await store.append(vm, [CREATED], expected_version=0)
    async with ReadModel(path, store, verify=False) as rm:
        await rm.catch_up()
        before = (await rm.position(), await rm.vm(vm.namespace, vm.name))
    async with ReadModel(path, store, verify=False) as rm:
        assert (await rm.position(), await rm.vm(vm.namespace, vm.name)) == before
        assert before[0] == await last_seq(nc)
        assert await rm.catch_up() == 0
        await store.append(vm, [m.VMStartRequested()], expected_version=1)
        assert await rm.catch_up() == 1  # only the new event, not the whole log again
        s = await rm.vm(vm.namespace, vm.name)
        assert s is not None and (s.version, s.status) == (2, "Starting")


async def test_rebuild_gives_identical_rows(model: ReadModel, store: EventStore, vm: Ref) -> None:
    node = Ref.node(f"node-{uuid.uuid4().hex[:8]}")
    await store.append(node, [REGISTERED], expected_version=0)
    await store.append(vm, [CREATED, *running(node.name)], expected_version=0)
    await model.catch_up()
    tables = ("SELECT * FROM vms ORDER BY namespace, name", "SELECT * FROM nodes ORDER BY name",
              "SELECT * FROM position")  # fmt: skip
    before = [await raw(model.path, sql) for sql in tables]
    assert await model.rebuild() >= 5
    assert [await raw(model.path, sql) for sql in tables] == before
    assert any(row[1] == vm.name for row in before[0])


async def test_deleted_then_recreated_vm_shows_its_new_life(
    model: ReadModel, store: EventStore, vm: Ref
) -> None:
    await store.append(vm, [CREATED, m.VMDeleteRequested(), m.VMDeleted()], expected_version=0)
    await model.catch_up()
    assert vm.name not in [s.name for s in await model.vms(vm.namespace)]
    [gone] = [s for s in await model.vms(vm.namespace, include_deleted=True) if s.name == vm.name]
    assert (gone.status, gone.exists, gone.deleted) == ("Deleted", False, True)
    again = m.VMCreated(spec={"running": False}, run_strategy="Halted", labels={"life": "2"})
    await store.append(vm, [again], expected_version=3)
    await model.catch_up()
    [s] = [s for s in await model.vms(vm.namespace) if s.name == vm.name]
    assert (s.status, s.exists, s.version, s.labels, s.run_strategy) == (
        "Stopped", True, 4, {"life": "2"}, "Halted",
    )  # fmt: skip


async def test_a_failed_transaction_moves_neither_rows_nor_position(
    model: ReadModel, store: EventStore, nc: Client, vm: Ref, monkeypatch: pytest.MonkeyPatch
) -> None:
    await model.catch_up()
    before = await raw(model.path, "SELECT seq FROM position")
    await store.append(vm, [CREATED], expected_version=0)
    # A "crash" after the rows are written but before the position is: the statement fails.
    monkeypatch.setattr(readmodel, "_SET_POSITION", "INSERT INTO no_such_table VALUES (?)")
    with pytest.raises(sqlite3.OperationalError):
        await model.catch_up()
    assert await raw(model.path, "SELECT seq FROM position") == before
    assert await raw(model.path, "SELECT * FROM vms WHERE name = ?", vm.name) == []
    monkeypatch.undo()
    assert await model.catch_up() >= 1
    [(seq,)] = await raw(model.path, "SELECT seq FROM position")
    assert seq == await last_seq(nc)
    [(version,)] = await raw(model.path, "SELECT version FROM vms WHERE name = ?", vm.name)
    assert version == 1


async def test_run_follows_live_appends_and_stops_cleanly(
    model: ReadModel, store: EventStore, nc: Client, vm: Ref
) -> None:
    await store.append(vm, [CREATED], expected_version=0)
    stop = asyncio.Event()
    runner = asyncio.create_task(model.run(stop), name="readmodel-run")
    try:
        for _ in range(100):  # first the catch-up
            if await model.vm(vm.namespace, vm.name) is not None:
                break
            await asyncio.sleep(0.05)
        await store.append(vm, running("node-live"), expected_version=1)
        s = await model.vm(vm.namespace, vm.name)
        for _ in range(200):  # then the live tail, within a generous 10 s
            if s is not None and s.status == "Running":
                break
            await asyncio.sleep(0.05)
            s = await model.vm(vm.namespace, vm.name)
        assert s is not None and (s.status, s.node, s.version) == ("Running", "node-live", 4)
        assert await model.position() == await last_seq(nc)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
    assert runner.exception() is None
    await store.append(vm, [m.VMStopRequested()], expected_version=4)
    assert await model.catch_up() == 1  # nothing was lost or applied twice across the handover


async def test_the_history_index_lists_each_vm_event_and_survives_a_rebuild(
    model: ReadModel, store: EventStore, vm: Ref
) -> None:
    await store.append(vm, [CREATED], expected_version=0)
    await store.append(vm, running("node-a"), expected_version=1)
    await model.catch_up()
    want = [(r.envelope.version, r.seq) for r in await store.read(vm)]
    assert await model.history_seqs(vm.namespace, vm.name) == want
    assert len(want) == 4
    await model.rebuild()
    assert await model.history_seqs(vm.namespace, vm.name) == want
    assert await model.history_seqs(vm.namespace, "never-made") == []


async def test_a_model_past_the_logs_end_is_rebuilt_from_this_log(
    tmp_path: Path, store: EventStore, vm: Ref
) -> None:
    """A data dir whose stream was made anew (its JetStream store removed, the orchestrator's
    file kept): the model's position is past the new log's end. It is rebuilt from the log it
    now reads, never left showing the old one."""
    path = tmp_path / "read.db"
    await store.append(vm, [CREATED], expected_version=0)
    async with ReadModel(path, store, verify=False) as rm:
        await rm.catch_up()
        assert await rm.vm(vm.namespace, vm.name) is not None
    async with NatsServer(data_dir=tmp_path / "fresh", port=-1) as fresh:
        nc = await nats.connect(fresh.url)
        try:
            await provision(nc.jetstream())
            new = EventStore(nc)
            await new.append(Ref.node("only-node"), [REGISTERED], expected_version=0)
            async with ReadModel(path, new, verify=False) as rm:
                assert await rm.catch_up() == 1
                assert (await rm.position(), await rm.vm(vm.namespace, vm.name)) == (1, None)
                assert [n.name for n in await rm.nodes()] == ["only-node"]
        finally:
            await nc.close()


async def test_a_page_of_vms_stops_at_its_byte_budget_and_its_namespaces(
    model: ReadModel, store: EventStore
) -> None:
    ns, other = f"pg-{uuid.uuid4().hex[:8]}", f"pg-{uuid.uuid4().hex[:8]}"
    for name in ("a", "b", "c"):
        await store.append(Ref.vm(name, ns), [CREATED], expected_version=0)
    await store.append(Ref.vm("z", other), [CREATED], expected_version=0)
    await model.catch_up()
    sql = "SELECT length(state) FROM vms WHERE namespace = ? AND name = 'a'"
    [one] = await raw(model.path, sql, ns)
    budget = 2 * one[0] + 2  # two rows and their separators fit, a third does not
    page, last = await model.vm_page(namespaces=(ns,), after=None, include_deleted=False,
                                     limit=0, budget=budget)  # fmt: skip
    assert ([msgspec.json.decode(b)["name"] for b in page], last) == (["a", "b"], (ns, "b"))
    page, last = await model.vm_page(namespaces=(ns,), after=last, include_deleted=False,
                                     limit=0, budget=budget)  # fmt: skip
    assert ([msgspec.json.decode(b)["name"] for b in page], last) == (["c"], None)
    # One row bigger than the budget still comes, alone: a page is never empty while VMs remain.
    page, last = await model.vm_page(namespaces=(ns,), after=None, include_deleted=False,
                                     limit=0, budget=1)  # fmt: skip
    assert ([msgspec.json.decode(b)["name"] for b in page], last) == (["a"], (ns, "a"))
    both = await model.vm_page(namespaces=(other, ns), after=None, include_deleted=False,
                               limit=0, budget=1 << 20)  # fmt: skip
    assert [msgspec.json.decode(b)["name"] for b in both[0]] == (
        ["a", "b", "c", "z"] if ns < other else ["z", "a", "b", "c"]
    )
    assert await model.vm_page(namespaces=(), after=None, include_deleted=False, limit=0,
                               budget=1 << 20) == ([], None)  # fmt: skip
