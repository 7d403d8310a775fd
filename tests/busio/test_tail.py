"""Live readers of the log on a real nats-server: one tail shared by several (bus/tail.py), and
a consuming loop's subscription that outlasts failures to make it (bus/reader.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator

from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from bus.pulling import Puller
from bus.store import EventStore
from bus.tail import Tail
from events import model as m
from events.envelope import Recorded
from events.names import Ref


async def _take(follow: AsyncGenerator[Recorded, None], n: int, *, under: str) -> list[int]:
    """The sequences of the next `n` records of `under`'s aggregate (others are passed over)."""
    seqs: list[int] = []
    async for rec in follow:
        if rec.subject.startswith(under):
            seqs.append(rec.seq)
            if len(seqs) == n:
                break
    await follow.aclose()
    return seqs


async def _append(store: EventStore, ref: Ref, n: int, *, version: int = 0) -> list[int]:
    seqs = []
    for i in range(n):
        event = m.VMCreated(spec={}) if version + i == 0 else m.VMStartRequested()
        seqs.append((await store.append(ref, [event], expected_version=version + i)).seq)
    return seqs


async def test_readers_joining_at_their_own_positions_see_each_record_once_in_order(
    store: EventStore,
) -> None:
    ref = Ref("vm", "default", f"tail-{uuid.uuid4().hex[:8]}")
    before = await _append(store, ref, 3)
    tail = Tail(store)
    # The first reader starts the tail at the second event and has read it...
    first = tail.follow(from_seq=before[1])
    assert (await anext(first)).seq == before[1]
    # ...the second joins behind it, at the first event, and reads that gap itself.
    behind = asyncio.create_task(_take(tail.follow(from_seq=before[0]), 5, under=ref.prefix))
    after = await _append(store, ref, 2, version=3)
    assert await _take(first, 3, under=ref.prefix) == [before[2], *after]
    assert await behind == [*before, *after]
    assert tail._task is None  # the last reader gone, the follow ended with it


async def test_a_reader_joining_ahead_gets_each_record_from_its_position_once(
    store: EventStore,
) -> None:
    ref = Ref("vm", "default", f"tail-{uuid.uuid4().hex[:8]}")
    seqs = await _append(store, ref, 1)
    tail = Tail(store)
    early = tail.follow(from_seq=seqs[0])
    assert (await anext(early)).seq == seqs[0]
    # Joining at a sequence not yet written: whether the tail delivers the next records before
    # or after it joins, it gets them once (from the tail, or reading the gap itself).
    late = tail.follow(from_seq=seqs[0] + 1)
    seqs += await _append(store, ref, 2, version=1)
    assert await _take(late, 2, under=ref.prefix) == seqs[1:]
    assert await _take(early, 2, under=ref.prefix) == seqs[1:]


async def test_a_consuming_loop_tries_again_until_its_consumer_is_made(nc: Client) -> None:
    """Making a consumer can fail (an election, a busy cluster, here a stream not made yet):
    the loop's subscription is tried again, never given up while the loop runs."""
    js, stream = nc.jetstream(), f"SUBSCRIBED_{uuid.uuid4().hex[:8]}"
    failed, stop = asyncio.Event(), asyncio.Event()

    async def make() -> JetStreamContext.PullSubscription:
        try:
            return await js.pull_subscribe(f"{stream}.x", durable="loop", stream=stream)
        except Exception:
            failed.set()
            raise

    puller = Puller(make, stop=stop, what="a test's stream")
    first = asyncio.create_task(puller.fetch(1))
    await failed.wait()
    assert not first.done()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    try:
        await js.publish(f"{stream}.x", b"taken")
        msgs = await first
        for _ in range(20):  # (a pull made before the publish may come back empty)
            if msgs:
                break
            msgs = await puller.fetch(1)
        assert [msg.data for msg in msgs] == [b"taken"]
        await puller.close()
    finally:
        await js.delete_stream(stream)


async def test_a_consuming_loop_stopped_before_its_consumer_is_made_takes_nothing() -> None:
    stop = asyncio.Event()
    stop.set()

    async def never() -> JetStreamContext.PullSubscription:
        raise AssertionError("not called once stopped")

    assert await Puller(never, stop=stop, what="nothing").fetch(10) == []
