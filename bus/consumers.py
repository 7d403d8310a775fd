"""The consumers a reader makes, under the names and filters its credentials allow.

An admin's connection makes any consumer. A user's or a node's takes one of its own slots
(`bus/readscope.py`): it asks the server to *create* (never update) `rd_<name>_<k>`, moving to the
next slot while one is in use by another of its reads, and a confined user's filter goes into the
API subject, one tree per consumer, where its permissions are checked. Past that, a consumer is a
consumer: `bus/reader.py` pulls ranges through it, `follow` tails the log through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from bus.readscope import read_scope
from events.errors import BusUnavailable

_IN_USE: Final = 10148  # "consumer already exists": another read of ours holds that slot
_SLOT_WAIT_S: Final = 10.0
_FOLLOW_BATCH: Final = 256


async def create(nc: Client, stream: str, config: ConsumerConfig) -> ConsumerInfo:
    """Create an ephemeral consumer of `stream` (`config` without a name), under a free slot of
    the connection's where it has slots."""
    scope = read_scope(nc)
    if not scope.slots:
        return await nc.jetstream().add_consumer(stream, config)
    # a nonce in the description: two reads asking the same thing are still two consumers
    config.description = f"read {os.getpid()}-{os.urandom(4).hex()}"
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + _SLOT_WAIT_S, 0.02
    while True:
        for slot in scope.slots:
            config.name = slot
            if (info := await _create_as(nc, stream, config)) is not None:
                return info
        if loop.time() > deadline:
            raise BusUnavailable(
                f"all {len(scope.slots)} read slots of these credentials are in use on {stream} "
                "(each read at once takes one; one a dead reader held frees itself within 10 s)"
            )
        await asyncio.sleep(pause)  # another read of ours finishes: wait for it, not fail
        pause = min(pause * 2, 0.5)


async def _create_as(nc: Client, stream: str, config: ConsumerConfig) -> ConsumerInfo | None:
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{config.name}"
    if config.filter_subject:
        subject += f".{config.filter_subject}"  # where the server checks it against permissions
    body = {"stream_name": stream, "config": config.as_dict(), "action": "create"}
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=5)
    except (TimeoutError, NoRespondersError) as err:
        raise BusUnavailable(f"creating a reader of {stream}: {type(err).__name__}") from err
    answer = json.loads(msg.data)
    if (error := answer.get("error")) is not None:
        if error.get("err_code") == _IN_USE:
            return None
        raise BusUnavailable(f"creating a reader of {stream}: {error.get('description')}")
    info: ConsumerInfo = ConsumerInfo.from_response(answer)
    return info


@contextlib.asynccontextmanager
async def held(nc: Client, stream: str, config: ConsumerConfig) -> AsyncIterator[ConsumerInfo]:
    """A reader's consumer for the length of the block, deleted after it, even when the reader
    is cancelled while the server is still making it (else a slot stays taken for seconds)."""
    making = asyncio.ensure_future(create(nc, stream, config))
    try:
        info = await asyncio.shield(making)
    except asyncio.CancelledError:
        making.add_done_callback(functools.partial(_delete_made, nc, stream))
        raise
    try:
        yield info
    finally:
        await delete(nc, stream, info.name)


def _delete_made(nc: Client, stream: str, making: asyncio.Future[ConsumerInfo]) -> None:
    if not making.cancelled() and making.exception() is None:
        name = making.result().name
        _CLEANUPS.add(task := asyncio.ensure_future(delete(nc, stream, name)))
        task.add_done_callback(_CLEANUPS.discard)


_CLEANUPS: set[asyncio.Future[None]] = set()  # deletions in flight, held until done


async def delete(nc: Client, stream: str, name: str) -> None:
    """Delete a reader's consumer, bounded (the server may be going away)."""
    await _bounded(nc.jetstream().delete_consumer(stream, name), within=2)


async def _bounded(step: Awaitable[object], *, within: float) -> None:
    """Run a teardown step for at most `within`, its failure (a closed connection) seen and
    dropped even when this is cancelled first (a generator finalized at the loop's end)."""
    task = asyncio.ensure_future(step)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    await asyncio.wait({task}, timeout=within)
    if not task.done():
        task.cancel()


def reading(
    filters: list[str] | None, *, start_seq: int | None = None, inactive_s: float = 10.0
) -> ConsumerConfig:
    """The config of a reader: no acks, in memory, one filter or several, from a point."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, inactive_threshold=inactive_s, mem_storage=True,
        num_replicas=1, max_waiting=8,
    )  # fmt: skip
    if filters is not None and len(filters) == 1:
        config.filter_subject = filters[0]
    elif filters:
        config.filter_subjects = filters
    if start_seq:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, start_seq
    return config


async def follow(
    nc: Client, stream: str, *, subjects: list[str] | None = None, from_seq: int | None = None
) -> AsyncGenerator[Msg, None]:
    """Every message on `subjects` (None: the whole stream, as far as the connection reads it)
    from `from_seq` (None: only new ones), as it arrives, until the caller stops."""
    scope = read_scope(nc)
    filters = scope.narrow(stream, subjects)
    if not scope.slots:
        async for msg in _ordered(nc, stream, filters, from_seq=from_seq):
            yield msg
        return
    if filters == []:
        await asyncio.Event().wait()  # nothing of it is readable: nothing will ever come
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=4 * _FOLLOW_BATCH)
    parts = [[f] for f in filters] if scope.confined and filters else [filters]
    tasks = [
        asyncio.create_task(_pull_follow(nc, stream, part, from_seq=from_seq, out=queue),
                            name=f"follow-{stream}-{i}")
        for i, part in enumerate(parts)
    ]  # fmt: skip
    try:
        while True:
            got = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([got, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if got not in done:
                got.cancel()
                for t in done:
                    t.result()  # a follower that failed: its error is the caller's
                continue
            yield got.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ordered(
    nc: Client, stream: str, filters: list[str] | None, *, from_seq: int | None
) -> AsyncGenerator[Msg, None]:
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if from_seq else DeliverPolicy.NEW,
        opt_start_seq=from_seq,
    )
    if filters and len(filters) > 1:
        config.filter_subjects = filters
    subject = filters[0] if filters and len(filters) == 1 else ">"
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True, config=config,
                                         stream=stream)  # fmt: skip
    try:
        async for msg in sub.messages:
            yield msg
    finally:
        await _bounded(sub.unsubscribe(), within=2)


async def _pull_follow(
    nc: Client, stream: str, filters: list[str] | None, *, from_seq: int | None,
    out: asyncio.Queue[Msg],
) -> None:  # fmt: skip
    """Tail one consumer by pull requests that expire (so a quiet log answers, and a consumer the
    server lost is made again from the next sequence)."""
    request = json.dumps({"batch": _FOLLOW_BATCH, "expires": 5_000_000_000}).encode()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            config = reading(filters, start_seq=from_seq)
            if not from_seq:
                config.deliver_policy = DeliverPolicy.NEW
            async with held(nc, stream, config) as info:
                next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
                from_seq = await _pull_until_lost(nc, sub, next_subject, request, inbox=inbox,
                                                  out=out, from_seq=from_seq)  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _pull_until_lost(
    nc: Client, sub: Subscription, next_subject: str, request: bytes, *, inbox: str,
    out: asyncio.Queue[Msg], from_seq: int | None,
) -> int | None:  # fmt: skip
    """Pull until the consumer is gone or silent past its expiry; the sequence to go on from."""
    got = 0
    await nc.publish(next_subject, request, reply=inbox)
    while True:
        try:
            msg = await sub.next_msg(timeout=10)
        except TimeoutError:
            return from_seq  # no answer, not even the expiry's: make the consumer again
        if not msg.reply:  # a status
            code = (msg.headers or {}).get("Status", "")
            if code not in ("408", "404"):
                return from_seq  # 409 consumer deleted, and the like
            got = 0
            await nc.publish(next_subject, request, reply=inbox)
            continue
        from_seq = msg.metadata.sequence.stream + 1
        await out.put(msg)
        got += 1
        if got % _FOLLOW_BATCH == 0:
            await nc.publish(next_subject, request, reply=inbox)
