"""Node loss: a Ready node whose heartbeat is older than the grace is recorded `NodeLost`.

The heartbeats live in a KV bucket with a TTL (ephemeral, by design), watched rather than asked
per node at every tick (at 100 nodes the asking was most of an idle controller's CPU); the loss is
a fact on the log, appended at the node's version so two controllers' timers cannot record it
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.kv import KV_DEL, KV_PURGE

from bus.store import EventStore
from events import model as m
from events.errors import ConcurrencyConflict
from events.names import Ref
from events.nodes import READY, Heartbeat, NodeState

log = logging.getLogger(__name__)


class Heartbeats:
    """Each node's last heartbeat time, from a watch of the bucket: one message per beat."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.ready = asyncio.Event()  # the bucket's current values are in

    async def run(self, kv: Any) -> None:
        while True:  # a watch that could not start (the bus away) is started again
            try:
                await self._watch(kv)
            except Exception as err:
                log.warning("watching the heartbeats failed (%s); again in 1 s", err)
                await asyncio.sleep(1)

    async def _watch(self, kv: Any) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the watch's marker: what the bucket held has been read
                    self.ready.set()
                elif entry.operation not in (KV_DEL, KV_PURGE):  # an expiry keeps the last beat
                    self.last[entry.key] = _beat_at(entry.value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()


def _beat_at(raw: bytes) -> float:
    try:
        return msgspec.json.decode(raw, type=Heartbeat).at
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0.0  # a heartbeat that says nothing readable is no heartbeat


async def record_lost(
    store: EventStore, last: Mapping[str, float], nodes: dict[str, NodeState], *, grace_s: float
) -> None:
    """Record `NodeLost` for each Ready node silent for more than `grace_s`."""
    now = time.time()
    for name, node in list(nodes.items()):
        if node.status != READY:
            continue
        at = last.get(name, 0.0)
        if now - at > grace_s:
            since = datetime.fromtimestamp(at, UTC) if at else None
            with contextlib.suppress(ConcurrencyConflict):
                await store.append(Ref.node(name), [m.NodeLost(last_heartbeat=since)],
                                   expected_version=node.version)  # fmt: skip
