"""EventStore against a real nats-server: concurrency, atomicity, idempotency, replay, bad input."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bus.provision import provision
from bus.server import NatsServer
from bus.store import Append, EventStore
from bus.vms import VMRepository
from events import model as m
from events.envelope import Recorded, seal
from events.errors import ConcurrencyConflict, TamperDetected, ValidationError
from events.names import EVENTS_STREAM, Ref

CREATED = m.VMCreated(spec={"running": False}, run_strategy="Halted")


async def test_append_then_load_round_trip(store: EventStore, vm: Ref) -> None:
    r1 = await store.append(vm, [CREATED], expected_version=0, command_id="c1", actor="alice")
    r2 = await store.append(
        vm, [m.VMStartRequested(), m.VMScheduled(node="node-a", vmi_uid="u1")], expected_version=1
    )
    assert (r1.version, r2.version) == (1, 3)
    state, version = await VMRepository(store).get(vm)
    assert version == 3
    assert (state.name, state.namespace, state.status, state.node) == (
        vm.name, "default", "Starting", "node-a",
    )  # fmt: skip
    history = await store.read(vm)
    assert [r.envelope.data for r in history] == [
        CREATED,
        m.VMStartRequested(),
        m.VMScheduled(node="node-a", vmi_uid="u1"),
    ]
    first = history[0].envelope
    assert (first.type, first.actor, first.correlationid, first.subject) == (
        "io.virtbus.vm.created.v1", "alice", "c1", f"vm/default/{vm.name}",
    )  # fmt: skip
    assert history[1].envelope.prevhash == history[0].hash


async def test_conflict_raises_with_actual_version(store: EventStore, nc: Client, vm: Ref) -> None:
    await store.append(vm, [CREATED], expected_version=0)
    other = EventStore(nc)  # a second writer with its own cache
    await other.append(vm, [m.VMStartRequested()], expected_version=1)
    with pytest.raises(ConcurrencyConflict) as exc:
        await store.append(vm, [m.VMStopRequested()], expected_version=1)
    assert (exc.value.expected_version, exc.value.actual_version) == (1, 2)
    with pytest.raises(ConcurrencyConflict) as exc:
        await store.append(vm, [m.VMCreated(spec={})], expected_version=0)
    assert exc.value.actual_version == 2
    assert (await VMRepository(store).get(vm))[1] == 2


async def test_same_command_id_stores_once(store: EventStore, nc: Client, vm: Ref) -> None:
    writers = [store, EventStore(nc)]  # a retrying client may also come back on a new connection
    results = [
        await writers[i % 2].append(vm, [CREATED, m.VMStartRequested()], expected_version=0,
                                    command_id="cmd-1")
        for i in range(1000)
    ]  # fmt: skip
    assert not results[0].duplicate
    assert all(r.duplicate and (r.version, r.seq) == (2, results[0].seq) for r in results[1:])
    assert len(await store.read(vm)) == 2


async def test_atomic_batch_with_a_conflicting_second_part_stores_nothing(
    store: EventStore, vm: Ref
) -> None:
    other = Ref.vm(f"other-{uuid.uuid4().hex[:8]}")
    await store.append(other, [CREATED], expected_version=0)
    before = (await store.nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    with pytest.raises(ConcurrencyConflict) as exc:
        await store.append_many(
            [
                Append(vm, [CREATED, m.VMStartRequested()], 0),
                Append(other, [m.VMStartRequested()], 0),
            ]
        )
    assert exc.value.actual_version == 1
    assert await store.read(vm) == []
    assert len(await store.read(other)) == 1
    assert (await store.nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq == before
    # The same batch with the right versions lands whole, in order.
    results = await store.append_many(
        [Append(vm, [CREATED, m.VMStartRequested()], 0), Append(other, [m.VMStartRequested()], 1)]
    )
    assert [(r.ref, r.version) for r in results] == [(vm, 2), (other, 2)]
    assert results[1].seq == results[0].seq + 1


async def test_fifty_concurrent_appenders_leave_no_gap(nc: Client, vm: Ref) -> None:
    await EventStore(nc).append(vm, [CREATED], expected_version=0)
    conflicts = 0

    async def writer(i: int) -> None:
        nonlocal conflicts
        s = EventStore(nc)
        while True:
            _, version = await VMRepository(s).get(vm)
            try:
                await s.append(vm, [m.VMFailed(reason=f"w{i}")], expected_version=version)
                return
            except ConcurrencyConflict:
                conflicts += 1

    await asyncio.gather(*(asyncio.create_task(writer(i), name=f"w{i}") for i in range(50)))
    history = await EventStore(nc).read(vm)
    assert [r.envelope.version for r in history] == list(range(1, 52))
    assert sorted(r.envelope.data.reason for r in history[1:]) == sorted(f"w{i}" for i in range(50))  # type: ignore[union-attr]
    assert conflicts > 0  # they really raced


async def test_replay_order_equals_append_order(store: EventStore, nc: Client) -> None:
    start = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq + 1
    vms = [Ref.vm(f"r-{uuid.uuid4().hex[:8]}") for _ in range(5)]
    appended = []
    for i in range(200):
        ref = vms[i % 5]
        r = await store.append(ref, [m.VMFailed(reason=str(i)) if i >= 5 else CREATED],
                               expected_version=i // 5)  # fmt: skip
        appended.append(r.seq)
    seen: list[Recorded] = []
    count = await store.replay(seen.append, from_seq=start)
    mine = [r for r in seen if r.seq in set(appended)]
    assert count >= 200
    assert [r.seq for r in mine] == appended
    assert [r.envelope.data for r in mine][5:] == [m.VMFailed(reason=str(i)) for i in range(5, 200)]


async def test_replay_from_the_start_checks_every_chain(store: EventStore, vm: Ref) -> None:
    await store.append(vm, [CREATED, m.VMStartRequested()], expected_version=0)
    states = await VMRepository(store).all()
    assert states[vm].status == "Starting"
    assert states[vm].version == 2


async def test_malformed_message_is_counted_and_skipped(
    store: EventStore, nc: Client, vm: Ref
) -> None:
    js = nc.jetstream()
    await store.append(vm, [CREATED], expected_version=0)
    start = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    await js.publish(vm.event_subject("garbage"), b"{not json")
    await js.publish(vm.event_subject("started"), b'{"kind": "VMStarted"}')
    # A writer whose cached head predates the garbage still appends (the store re-reads the head).
    await store.append(vm, [m.VMStartRequested()], expected_version=1)
    fresh = EventStore(nc)
    history = await fresh.read(vm)
    assert [r.envelope.version for r in history] == [1, 2]
    assert fresh.malformed == 2
    replayer = EventStore(nc)
    seen: list[Recorded] = []
    await replayer.replay(seen.append, from_seq=start + 1)
    assert [r.envelope.data for r in seen if r.subject.startswith(vm.prefix)] == [
        m.VMStartRequested()
    ]
    assert replayer.malformed == 2


async def test_forged_event_breaks_the_chain(store: EventStore, nc: Client, vm: Ref) -> None:
    await store.append(vm, [CREATED], expected_version=0)
    _, raw = seal(m.VMStartRequested(), ref=vm, version=2, prevhash="0" * 64, source="/mallory")
    await nc.jetstream().publish(vm.event_subject("start_requested"), raw)
    with pytest.raises(TamperDetected, match="does not chain"):
        await EventStore(nc).read(vm)


async def test_empty_and_oversized_appends_are_refused(store: EventStore, vm: Ref) -> None:
    with pytest.raises(ValidationError, match="no events"):
        await store.append(vm, [], expected_version=0)
    with pytest.raises(ValidationError, match="batch limit"):
        await store.append(vm, [m.VMStartRequested()] * 1001, expected_version=0)
    assert await store.read(vm) == []


async def test_follow_tails_new_events_live(store: EventStore, vm: Ref) -> None:
    await store.append(vm, [CREATED], expected_version=0)
    seen: list[Recorded] = []

    async def tail() -> None:
        async for rec in store.follow():
            if rec.subject.startswith(vm.prefix):
                seen.append(rec)
                if len(seen) == 2:
                    return

    follower = asyncio.create_task(tail(), name="follow")
    await asyncio.sleep(0.2)  # the follower starts at "new": the created event is history
    await store.append(vm, [m.VMStartRequested()], expected_version=1)
    await store.append(vm, [m.VMScheduled(node="n", vmi_uid="u")], expected_version=2)
    await asyncio.wait_for(follower, 10)
    assert [r.envelope.version for r in seen] == [2, 3]


async def test_rebuild_decodes_only_the_stamp_yet_equals_full_reads(tmp_path: Path) -> None:
    """`VMRepository.rebuild` (the start-up rebuild) folds `Stamp`s, not whole envelopes: every
    VM it builds must equal the fold of that VM's full history; a malformed message is counted
    and skipped, and a forged event stops a verified rebuild, naming where."""
    async with NatsServer(data_dir=tmp_path, port=-1) as server:  # its own log: a strict chain
        conn = await nats.connect(server.url)
        try:
            await provision(conn.jetstream())
            store = EventStore(conn)
            refs = [Ref.vm(f"r{i}", namespace=f"ns{i % 2}") for i in range(6)]
            life: list[m.Event] = [
                m.VMStartRequested(), m.VMScheduled(node="n1", vmi_uid="u"),
                m.DomainStarted(node="n1"), m.VMRunning(node="n1"), m.VMStopRequested(),
                m.DomainStopped(node="n1", reason="shutdown"),
            ]  # fmt: skip
            for i, ref in enumerate(refs):
                await store.append(ref, [CREATED, *life[:i]], expected_version=0)
            await conn.jetstream().publish(refs[0].event_subject("garbage"), b"{not json")
            node = m.NodeRegistered(hypervisor="test", libvirt_uri="test:///default", cpus=1,
                                    memory_bytes=1 << 30)  # fmt: skip
            await store.append(Ref.node("n1"), [node], expected_version=0)  # not a VM: skipped
            states, count = await VMRepository(store).rebuild()
            assert (count, store.malformed) == (2 + sum(1 + i for i in range(6)), 1)
            assert set(states) == {ref.prefix for ref in refs}
            for ref in refs:
                assert states[ref.prefix] == (await VMRepository(store).get(ref))[0]
            assert {s.status for s in states.values()} >= {"Stopped", "Starting", "Running"}

            _, raw = seal(m.VMStartRequested(), ref=refs[1], version=3, prevhash="0" * 64,
                          source="/mallory")  # fmt: skip
            await conn.jetstream().publish(refs[1].event_subject("start_requested"), raw)
            with pytest.raises(TamperDetected, match=f"{refs[1].prefix}: .* does not chain"):
                await VMRepository(store).rebuild()
            unverified = await VMRepository(store).all(verify=False)
            assert unverified[refs[1]].version == 3
        finally:
            await conn.close()
