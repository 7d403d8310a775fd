"""Fast reads of the log: one aggregate's history by batched direct get, everything by a raw pull.

nats-py's `fetch()` awaits each message and tops out near 20k msgs/s here; these readers use a core
subscription whose callback receives whole batches (the server streams them), which is what lets a
replay decode and fold close to the speed of the raw pull itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from bus import consumers
from bus.leanlogin import LeanUnavailable, login_of
from bus.leanpull import ack_position, lean_pull
from bus.readscope import read_scope
from events.errors import BusUnavailable

log = logging.getLogger("virtbus.reader")
BATCH: Final = 1000
RawHandler = Callable[[bytes, str, int], None]  # (data, subject, stream sequence)


async def direct_range(
    nc: Client, stream: str, *, subject_filter: str, start_seq: int = 1, wait_s: float = 10
) -> list[tuple[bytes, str, int]]:
    """Every message on `subject_filter` from `start_seq`, via batched direct gets (no consumer),
    or a consumer where the connection may not direct-get."""
    if not read_scope(nc).direct:
        out: list[tuple[bytes, str, int]] = []
        await pull_all(nc, stream, lambda d, s, q: out.append((d, s, q)),
                       filter_subjects=[subject_filter], start_seq=start_seq,
                       idle_timeout=wait_s)  # fmt: skip
        return out
    msgs = await _direct_msgs(nc, stream, subject_filter=subject_filter, start_seq=start_seq,
                              wait_s=wait_s)  # fmt: skip
    return [(data, h["Nats-Subject"], int(h["Nats-Sequence"])) for data, h in msgs]


async def direct_range_headers(
    nc: Client, stream: str, *, subject_filter: str, start_seq: int = 1, wait_s: float = 10
) -> list[tuple[bytes, dict[str, str]]]:
    """Like `direct_range`, with each message's headers (`Nats-Time-Stamp`, `Nats-Msg-Id`...),
    for streams whose bodies do not say when or under which id they were sent."""
    if not read_scope(nc).direct:
        out: list[tuple[bytes, dict[str, str]]] = []
        await pull_all(nc, stream, _ignore, filter_subjects=[subject_filter],
                       start_seq=start_seq, idle_timeout=wait_s,
                       on_msg=lambda m: out.append((m.data, _headers(m))))  # fmt: skip
        return out
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


def _ignore(data: bytes, subject: str, seq: int) -> None:
    """A raw handler for a read whose messages go whole to `on_msg`."""


def _headers(msg: Msg) -> dict[str, str]:
    """A consumed message's headers as a direct get would give them."""
    meta = msg.metadata
    return {**(msg.headers or {}), "Nats-Subject": msg.subject,
            "Nats-Sequence": str(meta.sequence.stream),
            "Nats-Time-Stamp": meta.timestamp.isoformat()}  # fmt: skip


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
    if not read_scope(nc).direct:
        found: list[tuple[bytes, str, int]] = []
        await pull_all(nc, stream, lambda d, s, q: found.append((d, s, q)),
                       filter_subjects=[subject_filter], last=True)  # fmt: skip
        return found[-1] if found else None
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
    on_msg: Callable[[Msg], None] | None = None,
    last: bool = False,
) -> int:
    """Feed every message (from a point) to `handler` until caught up; return how many.

    Only what the connection may read (`bus/readscope.py`): a confined reader's filters are cut
    to its trees, one consumer each, and their messages merged in log order. `on_msg`, if given,
    takes each whole nats-py message (headers, timestamp) instead of `handler`; `last`: only
    the newest message (of each filter, for a confined reader)."""
    scope = read_scope(nc)
    filters = scope.narrow(stream, filter_subjects)
    if filters == []:
        return 0
    one = functools.partial(_pull_one, nc, stream, start_seq=start_seq, start_time=start_time,
                            idle_timeout=idle_timeout, lean=lean and on_msg is None,
                            last=last)  # fmt: skip
    if not (scope.confined and filters and len(filters) > 1):
        return await one(filters, handler, on_msg)
    raw: dict[int, tuple[bytes, str]] = {}
    msgs: dict[int, Msg] = {}

    def keep_raw(data: bytes, subject: str, seq: int) -> None:
        raw.setdefault(seq, (data, subject))

    def keep_msg(msg: Msg) -> None:
        msgs.setdefault(_seq_of(msg), msg)

    for f in filters:  # trees may overlap (`virt.vm.>` and `virt.vm.a.x.>`): kept once each
        await one([f], keep_raw, None if on_msg is None else keep_msg)
    for seq in sorted(msgs or raw):
        if on_msg is not None:
            on_msg(msgs[seq])
        else:
            handler(*raw[seq], seq)
    return len(msgs or raw)


def _seq_of(msg: Msg) -> int:
    return ack_position(msg.reply)[0]


async def _pull_one(
    nc: Client, stream: str, filters: list[str] | None, handler: RawHandler,
    on_msg: Callable[[Msg], None] | None, *, start_seq: int | None, start_time: datetime | None,
    idle_timeout: float, lean: bool, last: bool,
) -> int:  # fmt: skip
    """An ephemeral consumer with no acks, pulled in batches of 1000 with one batch always in
    flight: by `bus/leanpull.py` on a connection of its own where it can log in (`lean`), else
    through nats-py, handled in a core-subscription callback."""
    config = consumers.reading(filters, start_seq=start_seq)
    if start_time and not start_seq:
        config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, start_time
    if last:
        config.deliver_policy = DeliverPolicy.LAST
    async with consumers.held(nc, stream, config) as info:
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
        if not info.num_pending:
            return 0
        # Two requests stay in flight; each expires so an idle consumer answers 408, not hangs.
        request = json.dumps({"batch": BATCH, "expires": 2_000_000_000}).encode()
        if lean and (login := login_of(nc)) is not None:
            with contextlib.suppress(LeanUnavailable):  # raised before any message: nats-py reads
                return await lean_pull(
                    login, next_subject=next_subject, request=request, batch=BATCH,
                    handler=handler, idle_timeout=idle_timeout,
                )  # fmt: skip
        return await _pull_nats(nc, stream, handler, on_msg, next_subject=next_subject,
                                request=request, idle_timeout=idle_timeout)  # fmt: skip


async def _pull_nats(
    nc: Client, stream: str, handler: RawHandler, on_each: Callable[[Msg], None] | None, *,
    next_subject: str, request: bytes, idle_timeout: float,
) -> int:  # fmt: skip
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
            if on_each is not None:
                on_each(msg)
            else:
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
