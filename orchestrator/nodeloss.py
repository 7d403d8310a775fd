"""Node loss: a Ready node whose heartbeat is older than the grace is recorded `NodeLost`.

The heartbeats live in a KV bucket with a TTL (ephemeral, by design); the loss is a fact on the
log, appended at the node's version so two controllers' timers cannot record it twice.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError

from bus.store import EventStore
from events import model as m
from events.errors import ConcurrencyConflict
from events.names import Ref
from events.nodes import READY, Heartbeat, NodeState


async def record_lost(
    store: EventStore, kv: Any, nodes: dict[str, NodeState], *, grace_s: float
) -> None:
    """Record `NodeLost` for each Ready node silent for more than `grace_s`."""
    now = time.time()
    for name, node in list(nodes.items()):
        if node.status != READY:
            continue
        try:
            entry = await kv.get(name)
            last = msgspec.json.decode(entry.value, type=Heartbeat).at
        except (KeyNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            last = 0.0
        if now - last > grace_s:
            since = datetime.fromtimestamp(last, UTC) if last else None
            with contextlib.suppress(ConcurrencyConflict):
                await store.append(Ref.node(name), [m.NodeLost(last_heartbeat=since)],
                                   expected_version=node.version)  # fmt: skip
