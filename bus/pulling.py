"""A consuming loop's pull subscription (the intake's commands, a node's work), kept alive.

A loop that died of a bus error, or that pulled forever from a consumer no longer there, would take
no work while its process looked alive. So the subscription is made until it is (making a consumer
times out during an election or on a busy cluster), a failed pull is paused and tried again, and
after a few failed pulls in a row the subscription is made again: its consumer may be gone (an
admin deleted it, or a server came back without it), and making it is idempotent (nats-py finds a
durable consumer that exists, the intake's takes over from its ack floor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

log = logging.getLogger("virtbus.reader")
REMAKE_AFTER: Final = 3  # failed pulls in a row (about a second apart) before a new subscription
_PAUSE_S: Final = 1.0

Subscription = JetStreamContext.PullSubscription


class Puller:
    """`fetch(batch)` of the subscription `make()` makes: [] when nothing came or the bus failed
    (a pause then), never an exception of the bus. `close()` when the loop ends."""

    def __init__(
        self, make: Callable[[], Awaitable[Subscription]], *, stop: asyncio.Event, what: str
    ) -> None:
        self.make = make
        self.stop = stop
        self.what = what
        self.remade = 0  # subscriptions made again after failed pulls
        self._sub: Subscription | None = None
        self._failed = 0

    async def fetch(self, batch: int) -> list[Msg]:
        sub = self._sub or await self._made()
        if sub is None:
            return []
        try:
            msgs: list[Msg] = await sub.fetch(batch, timeout=0.5)
        except TimeoutError:
            return []  # nothing to take: the consumer answered that much
        except Exception as err:
            if self.stop.is_set():
                return []
            self._failed += 1
            log.warning("pulling %s failed: %r; pulling again", self.what, err)
            if self._failed >= REMAKE_AFTER:
                log.warning("pulling %s failed %d times in a row: subscribing again (its "
                            "consumer may be gone)", self.what, self._failed)  # fmt: skip
                await self.close()
                self.remade += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), _PAUSE_S)
            return []
        self._failed = 0
        return msgs

    async def _made(self) -> Subscription | None:
        """`make()`, tried until it is made (None once `stop` is set)."""
        while not self.stop.is_set():
            try:
                self._sub, self._failed = await self.make(), 0
                return self._sub
            except Exception as err:
                log.warning("subscribing to %s failed: %r; trying again", self.what, err)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), _PAUSE_S)
        return None

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
