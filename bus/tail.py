"""One live tail of the log for every reader in a process.

The orchestrator's controller and read model both follow the whole log. Two follows cost the
server two deliveries of every event, and this process two decodes of each (TLS, the client's
parsing, the envelope): a fifth of what a VM start costs the orchestrator. A `Tail` follows once
and hands each record to every reader.

Readers join at their own positions. The first starts the follow where it asks; one that joins
later behind the tail reads the gap itself (a replay from its position to where the tail has
delivered), then goes on with the tail: every reader sees each record once, in log order. The
tail's failure is every reader's: each raises it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Protocol

from bus.store import EventStore
from events.envelope import Recorded


class Follows(Protocol):
    """What a live reader of the log needs: `EventStore` itself, or a `Tail` of it."""

    def follow(self, *, from_seq: int | None = None) -> AsyncGenerator[Recorded, None]: ...


class _Ended(Exception):
    pass


class Tail:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._readers: list[asyncio.Queue[Recorded | BaseException]] = []
        self._task: asyncio.Task[None] | None = None
        self._delivered = 0  # the last sequence handed to the readers

    async def follow(self, *, from_seq: int | None = None) -> AsyncGenerator[Recorded, None]:
        """The log from `from_seq` (default: what comes next) as it grows, shared."""
        queue: asyncio.Queue[Recorded | BaseException] = asyncio.Queue()
        gap: list[Recorded] = []
        if self._task is not None and self._task.done():  # it failed: its readers are leaving
            self._task = None
        if self._task is None:
            start = from_seq if from_seq is not None else await self.store.position() + 1
            self._delivered = start - 1
            self._task = asyncio.create_task(self._pump(start), name="log-tail")
        elif from_seq is not None and from_seq <= self._delivered:
            upto = self._delivered  # the tail brings what comes after; the gap is read here
            self._readers.append(queue)
            await self.store.replay(gap.append, from_seq=from_seq, verify=False)
            gap = [r for r in gap if r.seq <= upto]
        if queue not in self._readers:
            self._readers.append(queue)
        first = from_seq or 0
        try:
            for rec in gap:
                yield rec
            last = gap[-1].seq if gap else first - 1
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.seq > last:
                    last = item.seq
                    yield item
        finally:
            self._readers.remove(queue)
            if not self._readers and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _pump(self, start: int) -> None:
        try:
            async for rec in self.store.follow(from_seq=start):
                self._delivered = rec.seq
                for queue in self._readers:
                    queue.put_nowait(rec)
            raise _Ended("the live tail of the log ended")
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            for queue in self._readers:
                queue.put_nowait(err)
