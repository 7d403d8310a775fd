"""Streams, consumers and buckets virtbus needs, created idempotently.

Provisioning never changes an existing config behind an operator's back: a stream that exists with
different settings is a ConfigConflict naming the setting, not a silent update. The one exception
is additive: the subjects of aggregates added later (`ADDED_LATER`) are added, and reported.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from events.errors import ConfigConflict, ValidationError
from events.names import (
    COMMAND_SUBJECTS,
    COMMANDS_STREAM,
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    HEARTBEAT_BUCKET,
    LEASE_BUCKET,
    WORK_STREAM,
    WORK_SUBJECTS,
)

DUPLICATE_WINDOW_S: Final = 600.0
# Subjects added to a stream after virtbus data existed: provisioning adds them to an older stream.
# Every aggregate's but the first five (the log's first layout); listing them by hand missed
# instance types, pools and the KubeVirt object, so a log from before those would be refused.
FIRST_SUBJECTS: Final = frozenset(f"virt.{k}.>" for k in ("vm", "rs", "node", "volume", "webhook"))
ADDED_LATER: Final = frozenset(EVENT_SUBJECTS) - FIRST_SUBJECTS
HEARTBEAT_TTL_S: Final = 15.0


def stream_configs(*, replicas: int = 1) -> list[StreamConfig]:
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": DUPLICATE_WINDOW_S,
        "allow_direct": True,
        "num_replicas": replicas,
    }
    return [
        # The source of truth: kept forever, never deleted from, multi-event appends are atomic.
        StreamConfig(
            name=EVENTS_STREAM, subjects=list(EVENT_SUBJECTS), retention=RetentionPolicy.LIMITS,
            allow_atomic=True, deny_delete=True, deny_purge=True, **common,
        ),
        # What users asked, kept for audit; deduplicated by command id (Nats-Msg-Id).
        StreamConfig(
            name=COMMANDS_STREAM, subjects=list(COMMAND_SUBJECTS), retention=RetentionPolicy.LIMITS,
            deny_delete=True, deny_purge=True, **common,
        ),
        # Node work: each item is removed once a worker acks it.
        StreamConfig(
            name=WORK_STREAM, subjects=list(WORK_SUBJECTS), retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
    ]  # fmt: skip


# Settings whose difference from an existing stream we refuse to paper over.
_CHECKED: Final = (
    "subjects", "retention", "storage", "allow_direct", "allow_atomic", "deny_delete", "deny_purge",
    "duplicate_window",
)  # fmt: skip


def _differences(have: StreamConfig, want: StreamConfig, *, skip: str = "") -> list[str]:
    out = []
    for field in _CHECKED:
        if field == skip:
            continue
        a, b = getattr(have, field), getattr(want, field)
        if field == "subjects":
            a, b = sorted(a or []), sorted(b or [])
        elif field == "duplicate_window":
            a, b = round(a or 0), round(b or 0)
        else:
            a, b = a or False, b or False
        if a != b:
            out.append(f"{field}: existing {a!r}, virtbus needs {b!r}")
    return out


async def provision(js: JetStreamContext, *, replicas: int = 1) -> list[str]:
    """Create what is missing, with `replicas` copies of each stream and bucket (a cluster's);
    return what was created. Raise ConfigConflict on a mismatch, and a ValidationError naming
    `replicas` when the bus cannot hold that many."""
    created = []
    for want in stream_configs(replicas=replicas):
        assert want.name is not None
        try:
            info = await js.stream_info(want.name)
        except NotFoundError:
            await _created(functools.partial(js.add_stream, want), replicas=replicas)
            created.append(f"stream {want.name}" + (f" (R{replicas})" if replicas > 1 else ""))
            continue
        missing = set(want.subjects or []) - set(info.config.subjects or [])
        others = _differences(info.config, want, skip="subjects")
        if missing and missing <= ADDED_LATER and not others:
            # Aggregates newer than the stream: adding their subjects changes no stored data.
            await js.update_stream(info.config.evolve(subjects=list(want.subjects or [])))
            created.append(f"stream {want.name} subjects {', '.join(sorted(missing))}")
            continue
        diffs = _differences(info.config, want)
        if diffs:
            raise ConfigConflict(
                f"stream {want.name} exists with a different config ({'; '.join(diffs)}); "
                "virtbus does not change it: fix or remove the stream"
            )
    for name, ttl in ((HEARTBEAT_BUCKET, HEARTBEAT_TTL_S), (LEASE_BUCKET, 0.0)):
        try:
            await js.key_value(name)
        except BucketNotFoundError:
            # On disk, small as they are: a restarted server (a single one, or every member of
            # a cluster after a power loss) must still hold the lease's revision and the
            # nodes' last beats, or a holder's lease and every watch of the beats vanish.
            kv = KeyValueConfig(bucket=name, history=1, ttl=ttl or None,
                                storage=StorageType.FILE, replicas=replicas)  # fmt: skip
            await _created(functools.partial(js.create_key_value, kv), replicas=replicas)
            created.append(f"kv {name}")
    return created


T = TypeVar("T")
_NO_PEERS: Final = 10005  # no suitable peers for placement
_TOO_FEW: Final = {10074, _NO_PEERS}  # (10074: replicas > 1 on a single server)


_PLACEMENT_WAIT_S: Final = 10.0  # a new cluster's members report to its meta leader by then


async def _created(create: Callable[[], Awaitable[T]], *, replicas: int) -> T:
    """`create()`, with the server's refusal of the replica count said in virtbus's words. "No
    suitable peers" is asked again for a while first: a cluster just formed (its meta leader
    elected) may not have heard from every member yet, and places nothing on the unheard."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PLACEMENT_WAIT_S
    while True:
        try:
            return await create()
        except APIError as err:
            if err.err_code not in _TOO_FEW:
                raise
            if err.err_code == _NO_PEERS and loop.time() < deadline:
                await asyncio.sleep(0.25)
                continue
            refused = err
            break
    raise ValidationError(
        f"replicas: {replicas} copies of each stream asked, but the bus cannot hold them: "
        f"{refused.description} (a single server holds 1; a cluster at most one per server)",
        field="replicas",
    ) from refused
