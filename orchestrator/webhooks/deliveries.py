"""Delivery records: a read model in SQLite, written before the JetStream ack it stands for.

Why SQLite and not delivery events on the log: a fan-out of 1k events/s to five endpoints is 5k
records a second, above what one-at-a-time appends with per-aggregate concurrency sustain here,
and attempts are operational detail, not facts about VMs an auditor must replay forever.

Each record is committed before its message is acked (or nak'ed for a retry), together with the
subscription's position, in one transaction: a dispatcher killed between the POST and the commit
POSTs again with the same `webhook-id`; one killed between the commit and the ack finds the record
and acks without POSTing. Retrying records also tell a restarted dispatcher which VMs are blocked
behind a retry, so per-VM order survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import aiosqlite
import msgspec

from events.webhooks import FINAL, RETRYING, Delivery

log = logging.getLogger("virtbus.webhooks")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS deliveries (
    consumer TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, webhook_id TEXT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    code INTEGER NOT NULL, error TEXT NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
    next_at REAL NOT NULL, PRIMARY KEY (consumer, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_name ON deliveries (name, seq);
CREATE TABLE IF NOT EXISTS positions (consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
LINGER_S: Final = 0.02  # how long the writer gathers records before a commit
MAX_BATCH: Final = 2000
_COLUMNS: Final = (
    "consumer, seq, name, webhook_id, type, subject, status, attempts, code, error, first_at, "
    "last_at, next_at"
)
_UPSERT: Final = (
    f"INSERT OR REPLACE INTO deliveries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_POSITION: Final = (
    "INSERT INTO positions (consumer, seq) VALUES (?, ?) "
    "ON CONFLICT (consumer) DO UPDATE SET seq = max(seq, excluded.seq)"
)


Then = Callable[[], Awaitable[object]]


class DeliveryLog:
    """The SQLite file, and a writer that commits records in batches and then runs each
    record's `then` (the ack or nak) in order.

    A commit costs far more than a row (four trips to aiosqlite's thread at ~25 µs of CPU each,
    and the WAL write): with batches of a few rows at thousands of records a second, commits
    were half the dispatcher's CPU. So the writer lingers `linger_s` after a batch's first
    record before it commits. Only the ack waits for that; the next POST does not."""

    def __init__(self, path: Path, *, linger_s: float = LINGER_S) -> None:
        self.path = path
        self.linger_s = linger_s
        self._db: aiosqlite.Connection | None = None
        self._queue: list[tuple[Delivery, Then | None]] = []
        self._more = asyncio.Event()
        self._linger: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()  # a read never runs inside a batch's transaction

    async def open(self) -> None:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SCHEMA)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("DeliveryLog is not open")
        return self._db

    def record(self, delivery: Delivery, then: Then | None = None) -> None:
        self._queue.append((delivery, then))
        self._more.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Commit what is queued in batches and run the `then`s, until `stop` and nothing is
        left."""

        async def stopping() -> None:
            await stop.wait()
            self._more.set()
            _resolve(self._linger)  # stopping cuts a linger short

        waker = asyncio.create_task(stopping(), name="webhooks-writer-stop")
        try:
            while True:
                if not self._queue:
                    if stop.is_set():
                        return
                    self._more.clear()  # only now: a record or the stop sets it again
                    await self._more.wait()
                    continue
                if not stop.is_set() and self.linger_s > 0:
                    await self._linger_a_while()
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._flush(batch)
        finally:
            waker.cancel()

    async def _linger_a_while(self) -> None:
        loop = asyncio.get_running_loop()
        self._linger = loop.create_future()
        timer = loop.call_later(self.linger_s, _resolve, self._linger)
        try:
            await self._linger
        finally:
            timer.cancel()
            self._linger = None

    async def _flush(self, batch: list[tuple[Delivery, Then | None]]) -> None:
        await self._commit([d for d, _ in batch])
        for _, then in batch:
            if then is not None:
                try:
                    await then()
                except Exception as err:  # a closed connection: JetStream redelivers
                    log.warning("ack after commit failed: %r", err)

    async def _commit(self, rows: list[Delivery]) -> None:
        positions: dict[str, int] = {}
        for d in rows:
            if d.status in FINAL:
                positions[d.consumer] = max(positions.get(d.consumer, 0), d.seq)
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.executemany(_UPSERT, [msgspec.structs.astuple(d) for d in rows])
                await db.executemany(_POSITION, list(positions.items()))
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                raise

    async def _select(self, where: str, args: tuple[object, ...]) -> list[Delivery]:
        async with (
            self._lock,
            self.db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE {where}", args) as cur,
        ):
            rows = await cur.fetchall()
        return [Delivery(**dict(zip(_COLUMNS.split(", "), r, strict=True))) for r in rows]

    async def get(self, consumer: str, seq: int) -> Delivery | None:
        found = await self._select("consumer = ? AND seq = ?", (consumer, seq))
        return found[0] if found else None

    async def retrying(self, consumer: str) -> list[Delivery]:
        return await self._select("consumer = ? AND status = ? ORDER BY seq", (consumer, RETRYING))

    async def of(self, name: str, *, status: str | None = None, limit: int = 100) -> list[Delivery]:
        """A subscription's deliveries, newest first."""
        where, args = (
            ("name = ? AND status = ?", (name, status)) if status else ("name = ?", (name,))
        )
        return await self._select(f"{where} ORDER BY seq DESC LIMIT ?", (*args, limit))

    async def position(self, consumer: str) -> int:
        async with self.db.execute(
            "SELECT seq FROM positions WHERE consumer = ?", (consumer,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def _resolve(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)
