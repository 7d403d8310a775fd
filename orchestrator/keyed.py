"""A keyed work queue for level-triggered reactions, like controller-runtime's workqueue.

The controller folds the log in order on one task, but what it does about a VM (append a
decision, enqueue node work) waits on the bus. Awaiting that inside the fold loop made every VM
wait for every other VM's round trips: at a few hundred starts a second, seconds of lag. Here a
reaction runs on its own task, one at a time per key (a VM's decisions stay in order), many keys
side by side; a key kicked while its reaction runs runs once more afterwards, on the latest state
and with the latest cause, so no change is missed and none is handled twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from events.errors import VirtbusError

log = logging.getLogger("virtbus.controller")
C = TypeVar("C")


class KeyedQueue(Generic[C]):
    def __init__(
        self, handler: Callable[[str, C | None], Awaitable[object]], *, parallel: int, name: str
    ) -> None:
        self._handler = handler
        self._slots = asyncio.Semaphore(parallel)
        self._name = name
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, C | None] = {}  # kicked while running: the latest cause
        self._idle = asyncio.Event()
        self._idle.set()

    def kick(self, key: str, cause: C | None = None) -> None:
        if key in self._running:
            self._again[key] = cause if cause is not None else self._again.get(key)
            return
        self._idle.clear()
        self._running[key] = asyncio.create_task(self._run(key, cause), name=f"{self._name}-{key}")

    async def _run(self, key: str, cause: C | None) -> None:
        try:
            while True:
                async with self._slots:
                    try:
                        await self._handler(key, cause)
                    except VirtbusError as err:  # a bus hiccup must not stop the controller
                        log.warning("reacting to %s failed: %s", key, err)
                    except Exception:  # nor may one key's fault stop the others' reactions
                        log.exception("reacting to %s failed", key)
                if key not in self._again:
                    return
                cause = self._again.pop(key)
        finally:
            del self._running[key]
            if not self._running:
                self._idle.set()

    async def idle(self) -> None:
        """Until no reaction runs (and none is due to run again)."""
        await self._idle.wait()

    async def close(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
