"""An append whose answer is lost is sent again, and one that had landed is recognised as ours:
not stored twice, not a conflict. The server is paused (SIGSTOP) so the first attempt waits in
its socket and lands only after the store has given up on its answer, as an append to a dying
leader may."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bus.provision import provision
from bus.server import NatsServer
from bus.store import Append, EventStore
from events import model as m
from events.errors import BusUnavailable
from events.names import Ref

CREATED = m.VMCreated(spec={"running": False}, run_strategy="Halted")


@pytest.fixture
async def paused(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Client]]:
    """A server of this test's own (it is paused), provisioned, and a connection to it."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            await provision(nc.jetstream())
            yield server, nc
        finally:
            assert server.pid is not None
            os.kill(server.pid, signal.SIGCONT)  # whatever happened, it can stop
            await nc.close()


async def until_resent(store: EventStore) -> None:
    """Until the store has given up on an answer and sent the append again."""
    for _ in range(1000):
        if store.resent:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the append was never sent again")


async def pause(server: NatsServer) -> None:
    """SIGSTOP, and until the server is stopped indeed (a signal is delivered when the kernel
    next schedules it: it may answer one more request meanwhile)."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    for _ in range(1000):
        if _state(server.pid) == "T":
            return
        await asyncio.sleep(0.001)
    pytest.fail("the server did not stop")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@pytest.mark.parametrize("batch", [False, True], ids=["one-event", "atomic-batch"])
async def test_an_append_that_landed_unanswered_is_ours_on_the_resend(
    paused: tuple[NatsServer, Client], batch: bool
) -> None:
    server, nc = paused
    store = EventStore(nc, timeout=0.3)
    try:
        vm, other = Ref.vm("resend-a"), Ref.vm("resend-b")
        await store.append(vm, [CREATED], expected_version=0)
        await pause(server)
        if batch:
            appending = asyncio.create_task(store.append_many(
                [Append(vm, [m.VMStartRequested(), m.VMStopRequested()], 1),
                 Append(other, [CREATED], 0)],
            ), name="test-append")  # fmt: skip
        else:
            appending = asyncio.create_task(
                store.append(vm, [m.VMStartRequested()], expected_version=1), name="test-append"
            )
        await until_resent(store)  # the first answer was given up on
        assert server.pid is not None
        os.kill(server.pid, signal.SIGCONT)  # ... and the first attempt lands now
        result = await asyncio.wait_for(appending, 30)
        if batch:
            assert [(r.version, r.duplicate) for r in result] == [(3, False), (1, False)]
        else:
            assert (result.version, result.duplicate) == (2, False)
        fresh = EventStore(nc)
        history = await fresh.read(vm)  # (a chain-checked read: no gap, no fork)
        expected = [CREATED, m.VMStartRequested(), *([m.VMStopRequested()] if batch else [])]
        assert [r.envelope.data for r in history] == expected
        assert (history[-1].seq, history[-1].envelope.version) == (
            (result[0].seq, 3) if batch else (result.seq, 2)  # type: ignore[union-attr]
        )
        assert store.resent == 1
    finally:
        store.close()


async def test_a_bus_that_never_answers_is_said_after_the_bounded_wait(
    paused: tuple[NatsServer, Client],
) -> None:
    server, nc = paused
    store = EventStore(nc, timeout=0.2, retry_for=0.6)
    try:
        await store.append(Ref.vm("before"), [CREATED], expected_version=0)  # (logged in)
        await pause(server)
        with pytest.raises(BusUnavailable, match="got no answer"):
            await store.append(Ref.vm("never"), [CREATED], expected_version=0)
        assert store.resent == 1  # (one append, sent again until the bound)
    finally:
        store.close()
