"""`virtbus up` keeps its children running: a node worker or the orchestrator that dies is
started again after a back-off, and the stack says so, rather than going down with it.

A crash loop must not spin: the pause doubles from one second up to thirty, and starts over once a
child has stayed up for a minute. The nats-servers are kept the same way, by `upbus`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from rich.console import Console

BACKOFF_S: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HEALTHY_AFTER_S: Final = 60.0  # up this long: the next crash starts the back-off over

Spawn = Callable[[], Awaitable[asyncio.subprocess.Process]]


class Backoff:
    """The pause before the next restart of one child."""

    def __init__(self) -> None:
        self.restarts = 0

    def next(self, *, ran_s: float) -> float:
        if ran_s >= HEALTHY_AFTER_S:
            self.restarts = 0
        delay = BACKOFF_S[min(self.restarts, len(BACKOFF_S) - 1)]
        self.restarts += 1
        return delay


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def supervise_process(
    name: str, spawn: Spawn, *, first: asyncio.subprocess.Process, stop: asyncio.Event,
    console: Console, stop_process: Callable[[asyncio.subprocess.Process], Awaitable[None]],
) -> None:  # fmt: skip
    """Keep `first` (made by `spawn`) running until `stop`: `spawn` again whenever it exits
    before that."""
    loop, backoff, proc = asyncio.get_running_loop(), Backoff(), first
    while True:
        started = loop.time()
        ended = asyncio.create_task(proc.wait(), name=f"up-{name}-wait")
        stopping = asyncio.create_task(stop.wait(), name=f"up-{name}-stop")
        await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if stop.is_set():
            ended.cancel()
            await stop_process(proc)
            return
        delay = backoff.next(ran_s=loop.time() - started)
        console.print(f"{name}: exited with code {proc.returncode}; starting it again in "
                      f"{delay:.0f}s (restart {backoff.restarts})")  # fmt: skip
        await _pause(stop, delay)
        if stop.is_set():
            return
        proc = await spawn()
        console.print(f"{name}: running again (pid {proc.pid})")


async def supervise_task(
    name: str, run: Callable[[asyncio.Event], Awaitable[None]], *, stop: asyncio.Event,
    console: Console,
) -> None:  # fmt: skip
    """Run `run(own_stop)` until `stop`; when it ends (or fails) before, run it again.

    It gets a stop event of its own: a component that fails sets its own event to stop its
    parts, which must not stop the rest of the stack."""
    loop, backoff = asyncio.get_running_loop(), Backoff()
    while not stop.is_set():
        own = asyncio.Event()
        relay = asyncio.create_task(_relay(stop, own), name=f"up-{name}-relay")
        started = loop.time()
        why = "ended"
        try:
            await run(own)
        except Exception as err:
            why = f"failed: {type(err).__name__}: {err}"
        finally:
            relay.cancel()
        if stop.is_set():
            return
        delay = backoff.next(ran_s=loop.time() - started)
        console.print(f"{name}: {why}; starting it again in {delay:.0f}s "
                      f"(restart {backoff.restarts})")  # fmt: skip
        await _pause(stop, delay)


async def _relay(stop: asyncio.Event, own: asyncio.Event) -> None:
    await stop.wait()
    own.set()
