"""Waiting on a teardown step or a service: fail naming what is still pending, never hang."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from nats.aio.client import Client


async def settle(what: str, aw: Awaitable[object], *, within: float = 30) -> None:
    """Await a teardown step; if it hangs, fail naming every task still waiting, and where."""
    step = asyncio.ensure_future(aw)
    _, pending = await asyncio.wait({step}, timeout=within)
    if not pending:
        step.result()
        return
    stacks = []  # taken before anything is cancelled, so the culprit is still in the list
    for t in asyncio.all_tasks():
        frames = t.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        stacks.append(f"  {t.get_name()}: {where}")
    step.cancel()
    pytest.fail(f"{what} did not finish within {within}s; tasks:\n" + "\n".join(stacks))


async def api_ready(nc: Client, *, within: float = 30, subject: str = "virt.api.get") -> None:
    """Wait until `virtbus-api` answers (a loaded machine can take a while to start it)."""
    for _ in range(int(within / 0.1)):
        try:
            await nc.request(subject, b'{"what": "nodes"}', timeout=1)
            return
        except Exception:  # no responders yet, or a timeout
            await asyncio.sleep(0.1)
    pytest.fail(f"virtbus-api did not answer within {within}s")
