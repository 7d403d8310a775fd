"""Fast reads of the log: one aggregate's history by batched direct get, everything by a raw pull.

nats-py's `fetch()` awaits each message and tops out near 20k msgs/s here; these readers use a core
subscription whose callback receives whole batches (the server streams them), which is what lets a
replay decode and fold close to the speed of the raw pull itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from bus.leanlogin import LeanUnavailable, login_of
from bus.leanpull import ack_position, lean_pull
from events.errors import BusUnavailable

log = logging.getLogger("virtbus.reader")
BATCH: Final = 1000
RawHandler = Callable[[bytes, str, int], None]  # (data, subject, stream sequence)


async def direct_range(
    nc: Client, stream: str, *, subject_filter: str, start_seq: int = 1, wait_s: float = 10
) -> list[tuple[bytes, str, int]]:
    """Every message on `subject_filter` from `start_seq`, via batched direct gets (no consumer)."""
    msgs = await _direct_msgs(nc, stream, subject_filter=subject_filter, start_seq=start_seq,
                              wait_s=wait_s)  # fmt: skip
    return [(data, h["Nats-Subject"], int(h["Nats-Sequence"])) for data, h in msgs]


async def direct_range_headers(
    nc: Client, stream: str, *, subject_filter: str, start_seq: int = 1, wait_s: float = 10
) -> list[tuple[bytes, dict[str, str]]]:
    """Like `direct_range`, with each message's headers (`Nats-Time-Stamp`, `Nats-Msg-Id`...),
    for streams whose bodies do not say when or under which id they were sent."""
    return await _direct_msgs(nc, stream, subject_filter=subject_filter, start_seq=start_seq,
                              wait_s=wait_s)  # fmt: skip


async def direct_seqs(
    nc: Client, stream: str, seqs: list[int], *, wait_s: float = 10
) -> list[tuple[bytes, str, int]]:
    """The messages at `seqs` (pipelined direct gets), in stream order; a sequence that holds
    no message (deleted, or never written) is simply absent from the result."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    out: list[tuple[bytes, str, int]] = []
    try:
        subject = f"$JS.API.DIRECT.GET.{stream}"
        for start in range(0, len(seqs), BATCH):  # a window in flight, not the whole history
            chunk = seqs[start : start + BATCH]
            for seq in chunk:
                await nc.publish(subject, b'{"seq":%d}' % seq, reply=inbox)
            for _ in chunk:
                try:
                    msg = await sub.next_msg(timeout=wait_s)
                except TimeoutError as err:
                    raise BusUnavailable(f"direct get on {stream} timed out") from err
                h = msg.headers or {}
                if "Status" not in h:
                    out.append((msg.data, h["Nats-Subject"], int(h["Nats-Sequence"])))
    finally:
        await sub.unsubscribe()
    out.sort(key=lambda item: item[2])
    return out


async def _direct_msgs(
    nc: Client, stream: str, *, subject_filter: str, start_seq: int, wait_s: float
) -> list[tuple[bytes, dict[str, str]]]:
    out: list[tuple[bytes, dict[str, str]]] = []
    inbox = nc.new_inbox()
    # No callback: nats-py then starts no task per subscription, which matters on a hot path
    # (every command judged reads its VM's history).
    sub = await nc.subscribe(inbox)
    try:
        seq = start_seq
        while True:
            req = {"seq": seq, "next_by_subj": subject_filter, "batch": BATCH}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(req).encode(), reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout=wait_s)
                except TimeoutError as err:
                    raise BusUnavailable(f"direct get on {stream} timed out") from err
                h = msg.headers or {}
                status = h.get("Status")
                if status is None:
                    out.append((msg.data, h))
                    continue
                # 204 EOB ends a batch (with what is left); 404 means nothing matched at all.
                pending = int(h.get("Nats-Num-Pending", 0)) if status == "204" else 0
                break
            if pending == 0 or not out:
                return out
            seq = int(out[-1][1]["Nats-Sequence"]) + 1
    finally:
        await sub.unsubscribe()


async def direct_last(
    nc: Client, stream: str, subject_filter: str
) -> tuple[bytes, str, int] | None:
    """The newest message on `subject_filter` (wildcards allowed), or None."""
    req = json.dumps({"last_by_subj": subject_filter}).encode()
    try:
        msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}", req, timeout=5)
    except TimeoutError as err:
        raise BusUnavailable(f"direct get on {stream} timed out") from err
    h = msg.headers or {}
    if h.get("Status"):
        return None
    return msg.data, h["Nats-Subject"], int(h["Nats-Sequence"])


async def pull_all(
    nc: Client,
    stream: str,
    handler: RawHandler,
    *,
    filter_subjects: list[str] | None = None,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    idle_timeout: float = 10,
    lean: bool = True,
) -> int:
    """Feed every message (from a point) to `handler` until caught up; return how many.

    An ephemeral consumer with no acks, pulled in batches of 1000 with one batch always in flight:
    by `bus/leanpull.py` on a connection of its own where it can log in (`lean`), else through
    nats-py, handled in a core-subscription callback.
    """
    js = nc.jetstream()
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True, num_replicas=1,
        filter_subjects=filter_subjects, max_waiting=8,
    )  # fmt: skip
    if start_seq:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, start_seq
    elif start_time:
        config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, start_time
    info = await js.add_consumer(stream, config)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
    if not info.num_pending:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)
        return 0
    # Two requests stay in flight; each expires so an idle consumer answers 408 instead of hanging.
    request = json.dumps({"batch": BATCH, "expires": 2_000_000_000}).encode()
    if lean and (login := login_of(nc)) is not None:
        fallback = False
        try:
            return await lean_pull(
                login, next_subject=next_subject, request=request, batch=BATCH,
                handler=handler, idle_timeout=idle_timeout,
            )  # fmt: skip
        except LeanUnavailable:
            fallback = True  # raised before any message: nats-py reads them all instead
        finally:
            if not fallback:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, info.name)
    inbox = nc.new_inbox()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    count, pending = 0, -1
    last_seen = loop.time()

    async def on_msg(msg: Msg) -> None:
        nonlocal count, last_seen, pending
        if not msg.reply:  # a status: a pull request expired or was refused
            if pending == 0 and not done.done():
                done.set_result(None)
            elif not done.done():
                await nc.publish(next_subject, request, reply=inbox)
            return
        seq, pending = ack_position(msg.reply)
        try:
            handler(msg.data, msg.subject, seq)
        except Exception as err:  # surfaced to the caller, not lost in nats-py's error callback
            if not done.done():
                done.set_exception(err)
            return
        count += 1
        last_seen = loop.time()
        if count % BATCH == 0:
            await nc.publish(next_subject, request, reply=inbox)
        if pending == 0 and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * BATCH)
    try:
        for _ in range(2):
            await nc.publish(next_subject, request, reply=inbox)
        while not done.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), 1)
            if not done.done() and loop.time() - last_seen > idle_timeout:
                raise BusUnavailable(f"replay of {stream} stalled after {count} messages")
        return count
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)


async def fetch_some(
    sub: JetStreamContext.PullSubscription, *, batch: int, stop: asyncio.Event, what: str
) -> list[Msg]:
    """One pull of up to `batch` messages for a consuming loop: [] when none came, and [] too
    (after a pause of up to a second, cut short by `stop`) when the bus failed the pull, so that
    no error of the bus ends the loop that consumes."""
    try:
        msgs: list[Msg] = await sub.fetch(batch, timeout=0.5)
        return msgs
    except TimeoutError:
        return []
    except Exception as err:
        if not stop.is_set():
            log.warning("pulling %s failed: %r; pulling again", what, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return []
