"""The control plane's lease on a real nats-server: one holder at a time, a standby that takes
over when the holder stops renewing, and a resumed old holder that finds itself fenced off."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError

from orchestrator.lease import Holding, Lease, LeaseLost, bucket

TTL = 0.6  # short: the tests wait out whole ttls


async def leases(nc: Client, *holders: str) -> list[Lease]:
    kv, key = await bucket(nc), f"test-{uuid.uuid4().hex[:8]}"
    return [Lease(kv, holder=h, key=key, ttl_s=TTL) for h in holders]


async def renewed(lease: Lease, revision: int) -> None:
    """Until `lease` has written `revision` (its renewals: one each ttl/5)."""
    for _ in range(200):
        if lease.revision >= revision:
            return
        await asyncio.sleep(TTL / 10)
    pytest.fail(f"{lease.holder} never renewed up to revision {revision}")


async def test_a_standby_takes_over_from_a_holder_that_stopped_renewing(nc: Client) -> None:
    o1, o2 = await leases(nc, "o1", "o2")
    stop = asyncio.Event()
    first = await o1.acquire(stop)
    o1.check()  # it may act
    keeping = asyncio.create_task(o1.keep(stop), name="o1-keep")
    standby = asyncio.create_task(o2.acquire(stop), name="o2-acquire")
    try:
        await renewed(o1, first + 5)  # a whole ttl of renewals: the standby must not win
        assert not standby.done()
        keeping.cancel()  # o1 freezes: no renewal, no release
        second = await asyncio.wait_for(standby, 10)
        assert second > o1.revision  # a later revision: a later epoch
        entry = await o2.kv.get(o2.key)
        assert msgspec.json.decode(entry.value or b"", type=Holding).holder == "o2"
        with pytest.raises(LeaseLost, match=f"o1's {o1.key} lease was not renewed for"):
            o1.check()  # resumed, it refuses to act on its own clock
        with pytest.raises(LeaseLost, match=f"another orchestrator holds the {o1.key} lease"):
            await o1.keep(stop)  # and its first renewal is refused by the server
        with pytest.raises(LeaseLost, match=f"o1 does not hold the {o1.key} lease"):
            o1.check()
    finally:
        stop.set()
        keeping.cancel()
        await asyncio.gather(keeping, standby, return_exceptions=True)


async def test_of_many_contenders_one_wins_and_a_release_hands_over(nc: Client) -> None:
    contenders = await leases(nc, *(f"o{i}" for i in range(5)))
    stop, lost = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(c.acquire(stop), name=f"acquire-{c.holder}") for c in contenders]
    keeping: asyncio.Task[None] | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        winner = contenders[tasks.index(done.pop())]
        keeping = asyncio.create_task(winner.keep(lost), name="winner-keep")
        start = winner.revision
        await renewed(winner, start + 5)
        assert [t.done() for t in tasks].count(True) == 1  # held throughout: nobody else won
        lost.set()
        await keeping
        await winner.release()
        others = [t for t in tasks if not t.done()]
        done, _ = await asyncio.wait(others, return_when=asyncio.FIRST_COMPLETED, timeout=10)
        assert len(done) == 1  # exactly one of the others, once the key is gone
        second = contenders[tasks.index(done.pop())]
        assert second is not winner and second.epoch > start
    finally:
        stop.set()
        await asyncio.gather(*tasks, *([keeping] if keeping else []), return_exceptions=True)


async def test_a_renewal_that_landed_unanswered_is_taken_as_the_holders_own(nc: Client) -> None:
    """A renewal can land while its answer is lost (it timed out on a loaded bus): the next one
    then finds a newer revision, and that revision holds this holder's own write, so it renews
    on top of it rather than giving the lease up. Another holder's write there still fences it
    off."""
    [o1] = await leases(nc, "o1")
    stop = asyncio.Event()
    epoch = await o1.acquire(stop)
    ours = msgspec.json.encode(Holding("o1", epoch))
    landed = await o1.kv.update(o1.key, ours, last=o1.revision)  # o1 never heard of it
    keeping = asyncio.create_task(o1.keep(stop), name="o1-keep")
    try:
        await renewed(o1, landed + 2)
        assert not keeping.done()
        o1.check()
        for _ in range(20):  # (a renewal of o1's may land between the read and the write)
            entry = await o1.kv.get(o1.key)
            with contextlib.suppress(KeyWrongLastSequenceError):
                await o1.kv.update(o1.key, msgspec.json.encode(Holding("o2", epoch + 99)),
                                   last=entry.revision or 0)  # fmt: skip
                break
        with pytest.raises(LeaseLost, match=f"another orchestrator holds the {o1.key} lease"):
            await asyncio.wait_for(keeping, 10)
    finally:
        stop.set()
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
