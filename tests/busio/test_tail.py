"""One live tail of the log shared by several readers (bus/tail.py), on a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator

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
