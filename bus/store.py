"""The event store: appends with per-aggregate optimistic concurrency, atomic multi-event batches,
idempotency by command id, and hash-chained reads, all on one JetStream stream.

An aggregate's version is the count of its events; its JetStream "last subject sequence" over its
subject tree is what the server checks on append (`Nats-Expected-Last-Subject-Sequence[-Subject]`).
The store keeps the head (version, sequence, hash) of each aggregate it has touched, so a steady
writer pays no extra round trip.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import datetime
from typing import Final

import msgspec
from nats.aio.client import Client

from bus import consumers
from bus.crashpoints import crash_at
from bus.heads import Head, Heads
from bus.publish import (
    DUPLICATE_IN_BATCH,
    RETRY_FOR_S,
    WRONG_LAST_SEQ,
    ApiError,
    Landing,
    Message,
    Publisher,
    Rejected,
)
from bus.reader import RawHandler, direct_last, direct_range, pull_all
from bus.readscope import read_scope
from bus.telemetry import TRACE
from events.envelope import (
    ENVELOPE_DECODER,
    Chain,
    Recorded,
    attested,
    chain_hash,
    decode_envelope,
    seal,
)
from events.errors import BusUnavailable, ConcurrencyConflict, ValidationError
from events.errors import VirtbusError as _VirtbusError
from events.model import TOKEN, Event
from events.names import EVENTS_STREAM, Ref

log = logging.getLogger("virtbus.store")
MAX_BATCH: Final = 1000


class Append(msgspec.Struct, frozen=True):
    """One aggregate's share of an atomic append."""

    ref: Ref
    events: Sequence[Event]
    expected_version: int


class AppendResult(msgspec.Struct, frozen=True):
    ref: Ref
    version: int
    seq: int
    duplicate: bool = False


class EventStore:
    def __init__(
        self, nc: Client, *, source: str = "/virtbus", stream: str = EVENTS_STREAM,
        timeout: float = 5.0, writer: str = "", guard: Callable[[], object] | None = None,
        retry_for: float = RETRY_FOR_S,
    ) -> None:  # fmt: skip
        """`timeout`: one attempt's wait for the server's answer; `retry_for`: how long an append
        without one is sent again (a cluster's leader election) before BusUnavailable."""
        self.nc = nc
        self.guard = guard  # raises when this writer may no longer append (a lost lease)
        self.source = source
        self.writer = writer  # a node's name: the last token of every subject it appends to
        self.stream = stream
        self.timeout = timeout
        self.malformed = 0  # messages skipped because they do not decode
        self.heads = Heads()  # shared with siblings
        self._publisher = Publisher(nc, stream=stream, retry_for=retry_for)
        self._ids, self._appends = os.urandom(8).hex() + ".", itertools.count(1)  # msg ids

    def sibling(self, *, source: str) -> EventStore:
        """Another writer of this process on the same connection, appending as `source`: it
        shares this one's heads and its append connection, so an aggregate one of them wrote
        needs no lookup by the other before it writes next."""
        twin = copy.copy(self)
        twin.source = source
        return twin

    # --- decoding --------------------------------------------------------------------------------

    def decode(self, data: bytes, subject: str, seq: int) -> Recorded | None:
        """The recorded event, or None (counted in `malformed`) for bytes that are not one."""
        try:
            env = attested(decode_envelope(data), subject)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            self._malformed(err, subject=subject, seq=seq)
            return None
        return Recorded(env, seq, subject, chain_hash(data))

    def _malformed(self, err: Exception, *, subject: str, seq: int) -> None:
        self.malformed += 1
        log.warning("seq %s (%s) skipped: not a virtbus event: %s", seq, subject, err)

    # --- heads -----------------------------------------------------------------------------------

    async def head(self, ref: Ref, *, fresh: bool = False) -> Head:
        """Version, last stream sequence and last hash of `ref` (cached unless `fresh`)."""
        if not fresh and (cached := self.heads.get(ref.prefix)) is not None:
            return cached
        last = await direct_last(self.nc, self.stream, ref.wildcard)
        if last is None:
            head = Head()
        elif (rec := self.decode(*last)) is not None:
            head = Head(rec.envelope.version, rec.seq, rec.hash)
        else:  # the newest message is garbage: the valid head is further back
            _, head = await self._read_all(ref)
        self.heads[ref.prefix] = head
        return head

    async def _expected_head(self, part: Append) -> Head:
        # A new aggregate needs no lookup: "no message on its subjects yet" is what the server
        # checks for expected version 0, so a wrong guess is a conflict, not a broken chain.
        if part.expected_version == 0 and part.ref.prefix not in self.heads:
            return Head()
        # The cached head without a coroutine: a steady writer's every append comes this way.
        return self.heads.get(part.ref.prefix) or await self.head(part.ref)

    # --- appends ---------------------------------------------------------------------------------

    async def append(
        self, ref: Ref, events: Sequence[Event], *, expected_version: int, command_id: str = "",
        actor: str = "", causationid: str = "", correlationid: str | None = None,
    ) -> AppendResult:  # fmt: skip
        """Append `events` to `ref` atomically if its version is still `expected_version`.

        `command_id` makes the append idempotent and is the events' correlation id, unless
        `correlationid` says otherwise (a controller reacting on behalf of an earlier command).
        """
        results = await self.append_many(
            [Append(ref, events, expected_version)], command_id=command_id, actor=actor,
            causationid=causationid, correlationid=correlationid,
        )  # fmt: skip
        return results[0]

    async def append_many(
        self, parts: Sequence[Append], *, command_id: str = "", actor: str = "",
        causationid: str = "", correlationid: str | None = None,
    ) -> list[AppendResult]:  # fmt: skip
        """Append to several aggregates in one atomic batch: all stored, or none."""
        total = sum(len(p.events) for p in parts)
        if total == 0:
            raise ValidationError("append: no events given", field="events")
        if total > MAX_BATCH:
            raise ValidationError(f"append: {total} events exceed the batch limit of {MAX_BATCH}")
        for _ in range(2):
            heads = [await self._expected_head(p) for p in parts]
            if any(h.version != p.expected_version for h, p in zip(heads, parts, strict=True)):
                heads = [await self.head(p.ref, fresh=True) for p in parts]
            if all(h.version == p.expected_version for h, p in zip(heads, parts, strict=True)):
                try:
                    return await self._publish(
                        parts, heads, command_id=command_id, actor=actor,
                        causationid=causationid,
                        correlationid=command_id if correlationid is None else correlationid,
                    )  # fmt: skip
                except Rejected as rej:
                    if rej.err.err_code not in (WRONG_LAST_SEQ, DUPLICATE_IN_BATCH):
                        raise _VirtbusError(f"append rejected: {rej.err.description}") from None
                for p in parts:
                    self.heads.pop(p.ref.prefix, None)
            if command_id and (dup := await self._already_appended(parts, command_id)):
                return dup
            heads = [await self.head(p.ref, fresh=True) for p in parts]
            for h, p in zip(heads, parts, strict=True):
                if h.version != p.expected_version:
                    raise ConcurrencyConflict(
                        f"{p.ref}: expected version {p.expected_version}, it is at {h.version}",
                        expected_version=p.expected_version, actual_version=h.version,
                    )  # fmt: skip
            # Versions agree but the sequence moved (a foreign message on the tree): try once more.
        raise ConcurrencyConflict(
            f"{parts[0].ref}: the subject tree keeps moving", expected_version=0, actual_version=0
        )

    async def append_fact(
        self, ref: Ref, events: Sequence[Event], *, causationid: str = "",
        correlationid: str = "", together: bool = False,
    ) -> AppendResult:  # fmt: skip
        """Append observations that hold whatever happened before them (a node saw the domain
        start): at the current version, retrying on conflict instead of deciding again.

        One message per event, not an atomic batch: facts need no all-or-nothing, and a
        JetStream batch costs milliseconds where a single publish costs a quarter of one.
        `together`: one batch after all, where no decision may land between them (a stop's
        domain stopped and launcher deleted: the VM's deletion comes after both).
        """
        crash_at("reporting", events)  # (fault tests: done, and the log not told)
        result: AppendResult | None = None
        for part in [events] if together else ([e] for e in events):
            head = await self.head(ref)
            while True:
                try:
                    result = await self.append(
                        ref, part, expected_version=head.version, causationid=causationid,
                        correlationid=correlationid,
                    )  # fmt: skip
                    break
                except ConcurrencyConflict:
                    head = await self.head(ref, fresh=True)
        if result is None:
            raise ValidationError("append: no events given", field="events")
        crash_at("reported", events)  # (told, and the work that led to it not yet acknowledged)
        return result

    async def append_steps(
        self, ref: Ref, events: Sequence[Event], *, expected_version: int, causationid: str = "",
        correlationid: str = "",
    ) -> AppendResult:  # fmt: skip
        """Append decisions one message each, each expecting the one before (chained OCC).

        For level-triggered deciders only: if a step conflicts or the process dies between
        steps, the log holds a valid prefix and the next reconcile carries on from it.
        """
        result: AppendResult | None = None
        version = expected_version
        for event in events:
            result = await self.append(
                ref, [event], expected_version=version, causationid=causationid,
                correlationid=correlationid,
            )  # fmt: skip
            version = result.version
        if result is None:
            raise ValidationError("append: no events given", field="events")
        return result

    async def _publish(
        self, parts: Sequence[Append], heads: list[Head], *, command_id: str, actor: str,
        causationid: str, correlationid: str,
    ) -> list[AppendResult]:  # fmt: skip
        if self.guard is not None:
            self.guard()
        msgs: list[Message] = []
        new_heads: list[Head] = []
        trace = TRACE.get()
        for part, head in zip(parts, heads, strict=True):
            prev, version = head.hash, head.version
            for i, event in enumerate(part.events):
                version += 1
                _, raw = seal(
                    event, ref=part.ref, version=version, prevhash=prev, source=self.source,
                    actor=actor, correlationid=correlationid, causationid=causationid,
                    traceparent=trace,
                )  # fmt: skip
                prev = chain_hash(raw)
                hdrs: dict[str, str] = {"traceparent": trace} if trace else {}
                if i == 0:
                    hdrs["Nats-Expected-Last-Subject-Sequence"] = str(head.seq)
                    hdrs["Nats-Expected-Last-Subject-Sequence-Subject"] = part.ref.wildcard
                if command_id:
                    hdrs["Nats-Msg-Id"] = f"{command_id}/{part.ref}/{i}"
                elif not msgs:  # a resend of this very append (`Publisher.recover`) has it too
                    hdrs["Nats-Msg-Id"] = f"{self._ids}{next(self._appends)}"
                subject = part.ref.event_subject(TOKEN[type(event)], writer=self.writer)
                msgs.append((subject, raw, hdrs))
            new_heads.append(Head(version, 0, prev))
        try:
            ack = await self._publisher.send(msgs, within=self.timeout)
        except (BusUnavailable, Rejected) as err:  # a leader's election, perhaps: ride it out
            landing = Landing(parts[0].ref.wildcard, heads[0].seq)
            ack = await self._publisher.recover(err, msgs, within=self.timeout, landing=landing)
        if ack.duplicate:
            raise Rejected(ApiError(err_code=DUPLICATE_IN_BATCH, description="duplicate"))
        results, seq = [], ack.seq - len(msgs)
        for part, nh in zip(parts, new_heads, strict=True):
            seq += len(part.events)
            self.heads[part.ref.prefix] = Head(nh.version, seq, nh.hash)
            results.append(AppendResult(part.ref, nh.version, seq))
        return results

    @property
    def resent(self) -> int:
        """Appends this store sent again for want of an answer (a leader's election, mostly)."""
        return self._publisher.resent

    def close(self) -> None:
        """Close the store's own append connection, if it made one."""
        self._publisher.close()

    async def _already_appended(
        self, parts: Sequence[Append], command_id: str
    ) -> list[AppendResult] | None:
        results = []
        for p in parts:
            mine = [r for r in await self.read(p.ref) if r.envelope.correlationid == command_id]
            if not mine:
                return None
            results.append(AppendResult(p.ref, mine[-1].envelope.version, mine[-1].seq, True))
        return results

    # --- reads -----------------------------------------------------------------------------------

    async def _read_all(self, ref: Ref) -> tuple[list[Recorded], Head]:
        raw = await direct_range(self.nc, self.stream, subject_filter=ref.wildcard)
        chain = Chain(strict=True)
        out = []
        for item in raw:
            if (rec := self.decode(*item)) is not None:
                chain.check(rec)
                out.append(rec)
        last = out[-1] if out else None
        head = Head(last.envelope.version, raw[-1][2], last.hash) if last else Head(0, 0, "")
        if raw and not last:
            head = Head(0, raw[-1][2], "")
        return out, head

    async def read(
        self, ref: Ref, *, since: int | datetime | None = None, until: int | datetime | None = None
    ) -> list[Recorded]:
        """`ref`'s history, chain-checked, optionally bounded by version or time (inclusive)."""
        records, head = await self._read_all(ref)
        self.heads[ref.prefix] = head
        return [r for r in records if _within(r, since, until)]

    async def replay(
        self, handler: Callable[[Recorded], object], *, from_seq: int | None = None,
        from_time: datetime | None = None, subjects: list[str] | None = None, verify: bool = True,
    ) -> int:  # fmt: skip
        """Feed every event (from a point, optionally filtered) to `handler` in log order."""
        chain = Chain(strict=from_seq in (None, 1) and from_time is None and subjects is None)
        # The hot loop of every rebuild: decode and hash inline rather than through `decode()`,
        # whose two extra calls per event are a tenth of the replay's own cost.
        decode, sha256, check = ENVELOPE_DECODER.decode, hashlib.sha256, chain.check
        bad = (msgspec.DecodeError, msgspec.ValidationError)

        def on_raw(data: bytes, subject: str, seq: int) -> None:
            try:
                env = decode(data)
            except bad as err:
                self._malformed(err, subject=subject, seq=seq)
                return
            if subject.count(".") == 5:  # a node's: its name is in the subject (inline: hot)
                env = attested(env, subject)
            rec = Recorded(env, seq, subject, sha256(data).hexdigest())
            if verify:
                check(rec)
            handler(rec)

        return await self.replay_raw(on_raw, from_seq=from_seq, from_time=from_time,
                                     subjects=subjects)  # fmt: skip

    async def replay_raw(
        self, on_raw: RawHandler, *, from_seq: int | None = None,
        from_time: datetime | None = None, subjects: list[str] | None = None,
    ) -> int:  # fmt: skip
        """Feed every message (data, subject, stream sequence) to `on_raw` in log order, undecoded:
        for a fold that decodes only what it reads (`bus/vms.py`'s rebuild)."""
        return await pull_all(
            self.nc, self.stream, on_raw, filter_subjects=subjects,
            start_seq=from_seq, start_time=from_time,
        )  # fmt: skip

    async def position(self) -> int:
        """The stream sequence of the newest event this connection may read (0: none)."""
        if read_scope(self.nc).direct:
            return int((await self.nc.jetstream().stream_info(self.stream)).state.last_seq)
        last = await direct_last(self.nc, self.stream, ">")
        return last[2] if last else 0

    async def follow(
        self, *, from_seq: int | None = None, subjects: list[str] | None = None
    ) -> AsyncGenerator[Recorded, None]:
        """Live tail of the log (of `subjects`, else all it may read) from `from_seq` (default:
        only new events)."""
        async for msg in consumers.follow(self.nc, self.stream, subjects=subjects,
                                          from_seq=from_seq):  # fmt: skip
            rec = self.decode(msg.data, msg.subject, msg.metadata.sequence.stream)
            if rec is not None:
                yield rec


def _within(r: Recorded, since: int | datetime | None, until: int | datetime | None) -> bool:
    v, t = r.envelope.version, r.envelope.time
    if since is not None and (v < since if isinstance(since, int) else t < since):
        return False
    return until is None or (v <= until if isinstance(until, int) else t <= until)
