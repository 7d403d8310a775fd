"""Which orchestrator acts: a lease on the bus, held by compare-and-set on one KV key.

Two orchestrators (for a control plane that outlives one process) both answer virtbus-api and keep
their read models warm; only the lease's holder judges commands, decides, delivers webhooks and
seals the log. The holder rewrites the key every `ttl_s / 5` with the revision it last wrote
(`update(last=...)`); a standby that sees the revision unchanged for `ttl_s` writes over that very
revision, and the server lets exactly one such write through. The revision the winner got is its
epoch.

Fencing, in two layers. A holder that cannot renew (paused, cut off, or overwritten) stops acting
`ttl_s * 0.6` after its last good renewal, by its own clock, before any standby may take over
(a standby waits `ttl_s` from when it *saw* that renewal, which came after it was made): every
decision first asks `check()`, so a process resumed after a long pause refuses to act until a
renewal has succeeded, and that renewal fails once another holds the key. What it had in flight
meets the log's optimistic concurrency: an append decided on stale state finds its VM moved on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from events.errors import VirtbusError
from events.names import LEASE_BUCKET

log = logging.getLogger("virtbus.lease")
TTL_S: Final = 1.5  # the failover budget is 2 s from a holder's death to a standby's decision
_GIVE_UP: Final = 0.6  # of the ttl: a holder stops acting this long after its last renewal


class LeaseLost(VirtbusError):
    """This orchestrator no longer holds the lease (or cannot tell that it does): it must stop
    acting. Retryable: a command met by it is handed out again (to whoever holds the lease)."""

    retryable = True


class Holding(msgspec.Struct, frozen=True):
    holder: str
    epoch: int = 0


async def either(*events: asyncio.Event) -> None:
    """Until one of `events` is set (leadership, or the stop that comes first)."""
    waits = [asyncio.create_task(e.wait(), name=f"either-{i}") for i, e in enumerate(events)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def bucket(nc: Client) -> KeyValue:
    """The leases' bucket (`bus/provision.py` makes it, with the log's replicas)."""
    return await nc.jetstream().key_value(LEASE_BUCKET)


class Lease:
    def __init__(self, kv: KeyValue, *, holder: str, key: str = "controller",
                 ttl_s: float = TTL_S) -> None:  # fmt: skip
        self.kv = kv
        self.holder = holder
        self.key = key
        self.ttl_s = ttl_s
        self.epoch = 0  # the revision that won the lease; 0 while not holding it
        self.revision = 0  # the revision last written by this holder
        self._renewed = 0.0  # monotonic time of the last good write
        # Called when a renewal succeeds after a stretch in which `check()` refused to act (a
        # stalled loop): whatever was refused meanwhile is looked at again.
        self.on_regained: Callable[[], object] = lambda: None

    def check(self) -> None:
        """Raise LeaseLost unless the lease was renewed recently enough to act on."""
        if not self.epoch:
            raise LeaseLost(f"{self.holder} does not hold the {self.key} lease")
        if time.monotonic() - self._renewed > self.ttl_s * _GIVE_UP:
            raise LeaseLost(f"{self.holder}'s {self.key} lease was not renewed for "
                            f"{time.monotonic() - self._renewed:.1f}s")  # fmt: skip

    async def acquire(self, stop: asyncio.Event) -> int:
        """Wait until this orchestrator holds the lease; its epoch (0 if `stop` came first)."""
        seen, seen_at = -1, time.monotonic()
        while not stop.is_set():
            try:
                entry = await self.kv.get(self.key)
                current = entry.revision or 0
            except (KeyNotFoundError, KeyDeletedError):
                current = 0
            if current == 0:
                won = await self._write(create=True)
            elif current != seen:
                seen, seen_at, won = current, time.monotonic(), 0
            elif time.monotonic() - seen_at >= self.ttl_s:
                won = await self._write(last=current)
            else:
                won = 0
            if won > 0:
                self.epoch = won
                log.info("%s holds the %s lease (epoch %d)", self.holder, self.key, won)
                return won
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 6)
        return 0

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until `stop`; raise LeaseLost once another holds it. While the bus does not
        answer, `check()` refuses to act past the give-up and renewing goes on."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 5)
            if stop.is_set():
                return
            stale = time.monotonic() - self._renewed > self.ttl_s * _GIVE_UP
            try:  # even past its time (a pause): the server says whether it is still ours
                async with asyncio.timeout(self.ttl_s * _GIVE_UP):
                    written = await self._write(last=self.revision)
            except TimeoutError:
                written = 0
            if written < 0:
                self.epoch = 0
                raise LeaseLost(f"another orchestrator holds the {self.key} lease now")
            # Unanswered (an election of the bucket's servers): `check()` refuses to act once
            # the lease is stale, and renewing goes on; nobody else can write it meanwhile.
            if written > 0 and stale:
                log.warning("%s lease renewed after %s stalled; looking at everything again",
                            self.key, self.holder)  # fmt: skip
                self.on_regained()

    async def release(self) -> None:
        """Give the lease up at once (a graceful stop): a standby need not wait out the ttl."""
        if self.epoch:
            self.epoch = 0
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kv.delete(self.key, last=self.revision), 2)

    async def _write(self, *, create: bool = False, last: int = 0) -> int:
        """The revision written; 0 if the bus failed; -1 if another write came first."""
        value = msgspec.json.encode(Holding(self.holder, self.epoch))
        started = time.monotonic()
        try:
            revision = await (self.kv.create(self.key, value) if create
                              else self.kv.update(self.key, value, last=last))  # fmt: skip
        except KeyWrongLastSequenceError:
            if create or (last := await self._ours(value)) == 0:
                return -1
            try:  # an earlier renewal landed unanswered: renew on top of it
                revision = await self.kv.update(self.key, value, last=last)
            except Exception as err:
                log.warning("%s lease: %r", self.key, err)
                return -1 if isinstance(err, KeyWrongLastSequenceError) else 0
        except Exception as err:  # the bus: said, and tried again on the next round
            log.warning("%s lease: %r", self.key, err)
            return 0
        self.revision, self._renewed = revision, started
        return revision

    async def _ours(self, value: bytes) -> int:
        """The lease's revision if what it holds is this holder's own write (of this epoch: a
        renewal whose answer was lost, a timeout that came after it landed), else 0."""
        try:
            entry = await self.kv.get(self.key)
        except Exception:
            return 0
        return (entry.revision or 0) if entry.value == value else 0
