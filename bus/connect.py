"""How the orchestrator and the CLI reach the bus: the URL rules and an owned-or-borrowed server.

Every command that touches the bus takes `--server`, else `VIRTBUS_NATS_URL`, else the default; the
embedded stack starts its own nats-server instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.aio.client import Client

from bus.server import DEFAULT_URL, NatsServer
from events.errors import BusUnavailable

log = logging.getLogger("virtbus.bus")


def server_url(explicit: str | None) -> str:
    return explicit or os.environ.get("VIRTBUS_NATS_URL") or DEFAULT_URL


async def connect(url: str, *, name: str = "virtbus") -> Client:
    seen: list[Exception] = []

    async def quiet(err: Exception) -> None:
        # nats-py prints a traceback per failed attempt by default; our caller reports the outcome,
        # with the last attempt's own reason ("Connect call failed"), not nats-py's summary.
        log.debug("nats: %s", err)
        seen.append(err)

    try:
        return await nats.connect(
            url, name=name, connect_timeout=2, max_reconnect_attempts=3, allow_reconnect=True,
            reconnect_time_wait=0.5, error_cb=quiet,
        )  # fmt: skip
    except Exception as err:  # nats-py raises several unrelated types for "no server there"
        why = str(seen[-1] if seen else err) or type(err).__name__
        raise BusUnavailable(f"cannot reach NATS at {url}: {why}") from err


@contextlib.asynccontextmanager
async def bus_for_bench(explicit: str | None, *, sync_always: bool = False) -> AsyncIterator[str]:
    """A given server, or a throw-away embedded one so a benchmark never touches real data."""
    if explicit:
        yield explicit
        return
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-") as tmp:
        async with NatsServer(data_dir=Path(tmp), port=-1, sync_always=sync_always) as server:
            yield server.url
