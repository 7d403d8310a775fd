"""The control plane's read model: the log folded into SQLite, so `get` never replays the log.

A projection, never a source of truth: every row is the fold (events.state / events.nodes) of its
aggregate's events, and the stream position the rows reflect is written in the same transaction
as the rows, so after any crash the two agree and catching up resumes exactly where they stop.
Dropping the file, or `rebuild()`, loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

import aiosqlite
import msgspec

from bus.store import EventStore
from bus.tail import Follows
from events.envelope import Envelope, Recorded
from events.names import Ref, ref_from_subject
from events.nodes import NodeState, apply_node
from events.state import VMState, apply

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS vms (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    status TEXT NOT NULL, phase TEXT NOT NULL, node TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, version INTEGER NOT NULL, status TEXT NOT NULL, state BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS position (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version)
) WITHOUT ROWID;
"""
_UPSERT_VM: Final = (
    "INSERT OR REPLACE INTO vms (namespace, name, version, status, phase, node, state) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_NODE: Final = "INSERT OR REPLACE INTO nodes (name, version, status, state) VALUES (?,?,?,?)"
log = logging.getLogger("virtbus.readmodel")
_SET_POSITION: Final = "INSERT OR REPLACE INTO position (id, seq) VALUES (1, ?)"
# The history index: where each VM event sits in the stream, so one VM's history is a set of
# direct gets instead of a filtered read the server answers by scanning its blocks.
_INDEX: Final = "INSERT OR REPLACE INTO history (namespace, name, version, seq) VALUES (?,?,?,?)"
_CHUNK: Final = 400  # keys per `IN (...)` query, well under SQLite's variable limit
_LIVE_BATCH: Final = 1000  # most events one live transaction takes

_encode: Final = msgspec.json.Encoder().encode
_decode_vm: Final = msgspec.json.Decoder(VMState).decode
_decode_node: Final = msgspec.json.Decoder(NodeState).decode


class _Liveness(msgspec.Struct, frozen=True):
    """What a listing filters a VM row on, read without decoding the whole state."""

    exists: bool = False
    deleted: bool = False


_liveness: Final = msgspec.json.Decoder(_Liveness).decode
_PAGE_ROWS: Final = 512  # rows read per trip to SQLite while filling one page

VMKey: TypeAlias = tuple[str, str]  # (namespace, name)
_Item: TypeAlias = tuple[str, Any, Envelope]  # (kind, key, envelope) of one event to fold


class ReadModel:
    """VMs and nodes as of stream position `position()`, in one SQLite file (WAL)."""

    def __init__(self, path: Path | str, store: EventStore, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.store = store
        self.verify = verify  # check hash chains on catch-up (the live tail never does)
        self.follows: Follows = store  # the live log: its own follow, or a Tail shared with others
        self._db: aiosqlite.Connection | None = None  # queries
        # The writer's own connection, used only in a thread under `_apply_lock`: a whole
        # transaction (read the rows, fold, write) costs one hop off the loop, not ten.
        self._wdb: sqlite3.Connection | None = None
        self._pos = 0
        self._apply_lock = asyncio.Lock()  # one writer: catch-up, live commits and rebuild

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self._wdb = await asyncio.to_thread(_open_writer, self.path)
        try:
            # WAL: a query sees the last commit while the writer writes the next.
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            self._pos = await self.position()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
        if self._wdb is not None:
            wdb, self._wdb = self._wdb, None
            await asyncio.to_thread(wdb.close)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("ReadModel is not open")
        return self._db

    # --- projection ------------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Fold every event after `position()` in one transaction; return how many were read.

        A model that reflects more of the log than the log holds was made from another log (a
        data dir whose stream was made anew): it is rebuilt from this one, not left stale."""
        async with self._apply_lock:
            position = await self.position()
            if position and position > await self._log_end():
                log.warning("the read model is at seq %d, past the log's end: rebuilding it",
                            position)  # fmt: skip
                return await self._catch_up(rebuild=True)
            return await self._catch_up(rebuild=False)

    async def _log_end(self) -> int:
        info = await self.store.nc.jetstream().stream_info(self.store.stream)
        return int(info.state.last_seq)

    async def rebuild(self) -> int:
        """Refold the whole log; the old rows are swapped for the new in one transaction, so
        readers see the old model or the new one, never an empty one."""
        async with self._apply_lock:
            return await self._catch_up(rebuild=True)

    async def _catch_up(self, *, rebuild: bool) -> int:
        start = 1 if rebuild else (await self.position()) + 1
        records: list[Recorded] = []
        # The replay handler is synchronous: collect now, fold and write once it has finished.
        await self.store.replay(records.append, from_seq=start, verify=self.verify)
        await self._apply(records, rebuild=rebuild)
        return len(records)

    async def run(self, stop: asyncio.Event) -> None:
        """Catch up, then follow the log live until `stop` is set.

        Each event is committed as soon as the previous commit is done, together with whatever
        arrived meanwhile: a live event waits one commit (milliseconds), never a timer.
        """
        await self.catch_up()
        queue: asyncio.Queue[Recorded] = asyncio.Queue()

        async def pump() -> None:
            async for rec in self.follows.follow(from_seq=self._pos + 1):
                queue.put_nowait(rec)

        follower = asyncio.create_task(pump(), name="readmodel-follow")
        stopping = asyncio.create_task(stop.wait(), name="readmodel-stop")
        try:
            while not stop.is_set():
                waiter = asyncio.create_task(queue.get(), name="readmodel-next")
                await asyncio.wait(
                    {waiter, stopping, follower}, return_when=asyncio.FIRST_COMPLETED
                )
                batch = [waiter.result()] if waiter.done() else []
                await _cancel(waiter)
                while not queue.empty() and len(batch) < _LIVE_BATCH:
                    batch.append(queue.get_nowait())
                if batch:
                    async with self._apply_lock:
                        await self._apply(batch, rebuild=False)
                if follower.done():
                    follower.result()  # the tail died: raise its error rather than go stale
                    raise RuntimeError("the live tail of the log ended")
        finally:
            await _cancel(follower)
            await _cancel(stopping)

    async def _apply(self, records: Sequence[Recorded], *, rebuild: bool) -> None:
        """Fold `records` onto their aggregates' rows; write rows and position in one go."""
        records = [r for r in records if rebuild or r.seq > self._pos]  # never fold twice
        if not records and not rebuild:
            return
        items: list[_Item] = []
        index: list[tuple[str, str, int, int]] = []
        for rec in records:
            ref = ref_from_subject(rec.subject)
            if ref is None or ref.kind not in ("vm", "node"):
                continue  # other aggregates are not modelled, yet they move the position
            key = (ref.namespace, ref.name) if ref.kind == "vm" else ref.name
            items.append((ref.kind, key, rec.envelope))
            if ref.kind == "vm":
                index.append((ref.namespace, ref.name, rec.envelope.version, rec.seq))
        position = records[-1].seq if records else 0
        if self._wdb is None:
            raise RuntimeError("ReadModel is not open")
        await asyncio.to_thread(_transact, self._wdb, items, index, position=position,
                                rebuild=rebuild)  # fmt: skip
        self._pos = position

    # --- queries ---------------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def position(self) -> int:
        """The stream sequence of the last event the rows include (0: none)."""
        rows = await self._fetch("SELECT seq FROM position WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    async def vms(
        self, namespace: str | None = None, *, include_deleted: bool = False
    ) -> list[VMState]:
        """VMs by namespace then name; only those that exist unless `include_deleted`."""
        where = "" if namespace is None else " WHERE namespace = ?"
        args = () if namespace is None else (namespace,)
        rows = await self._fetch(f"SELECT state FROM vms{where} ORDER BY namespace, name", args)
        states = [_decode_vm(blob) for (blob,) in rows]
        # `deleted`, not the status column: the status is a display string.
        return [s for s in states if s.exists or (include_deleted and s.deleted)]

    async def vm_page(
        self, *, namespaces: Sequence[str] | None, after: VMKey | None, include_deleted: bool,
        limit: int, budget: int,
    ) -> tuple[list[bytes], VMKey | None]:  # fmt: skip
        """One page of a VM list, as the rows' own JSON (an answer splices them in unparsed):
        those after `after` by (namespace, name), at most `limit` (0: any number) and about
        `budget` bytes, and the last one's key when more may follow (None: the list is done)."""
        where, args = ["(namespace, name) > (?, ?)"], list(after or ("", ""))
        if namespaces is not None:
            where.append(f"namespace IN ({','.join('?' * len(namespaces))})")
            args += namespaces
        sql = (f"SELECT namespace, name, state FROM vms WHERE {' AND '.join(where)} "
               f"ORDER BY namespace, name LIMIT {_PAGE_ROWS}")  # fmt: skip
        page: list[bytes] = []
        size, last = 0, after
        while True:
            rows = await self._fetch(sql, args)
            for ns, name, blob in rows:
                live = _liveness(blob)
                if not (live.exists or (include_deleted and live.deleted)):
                    continue
                if page and (len(page) == limit or size + len(blob) > budget):
                    return page, last  # one more is there: the next page starts after `last`
                page.append(blob)
                size, last = size + len(blob) + 1, (ns, name)
            if len(rows) < _PAGE_ROWS:
                return page, None
            args[:2] = rows[-1][:2]

    async def vm(self, namespace: str, name: str) -> VMState | None:
        """The folded VM, deleted or not (check `.exists`), or None if the log never named it."""
        sql = "SELECT state FROM vms WHERE namespace = ? AND name = ?"
        rows = await self._fetch(sql, (namespace, name))
        return _decode_vm(rows[0][0]) if rows else None

    async def history_seqs(self, namespace: str, name: str) -> list[tuple[int, int]]:
        """(version, stream sequence) of each of the VM's events, by version."""
        sql = "SELECT version, seq FROM history WHERE namespace = ? AND name = ? ORDER BY version"
        return [(int(v), int(q)) for v, q in await self._fetch(sql, (namespace, name))]

    async def history_index(self, ref: Ref) -> tuple[list[tuple[int, int]], int]:
        """The VM's history index and the position it is whole to (`bus.history.IndexReader`).
        The position is read first: the index may then go past it, never stop short of it."""
        position = await self.position()
        return await self.history_seqs(ref.namespace, ref.name), position

    async def nodes(self) -> list[NodeState]:
        rows = await self._fetch("SELECT state FROM nodes ORDER BY name")
        return [_decode_node(b) for (b,) in rows]


def _open_writer(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are _transact's explicit BEGIN/COMMIT, nothing implicit.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; fine for a cache
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def _transact(
    db: sqlite3.Connection, items: Sequence[_Item], index: list[tuple[str, str, int, int]], *,
    position: int, rebuild: bool,
) -> None:  # fmt: skip
    """Fold `items` onto their rows and write rows, index and position in one transaction (in a
    thread: the writer's connection is used nowhere else)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if rebuild:
            for table in ("vms", "nodes", "position", "history"):
                db.execute(f"DELETE FROM {table}")
        vm_keys = sorted({key for kind, key, _ in items if kind == "vm"})
        node_keys = sorted({key for kind, key, _ in items if kind == "node"})
        vms: dict[VMKey, VMState] = {}
        nodes: dict[str, NodeState] = {}
        if not rebuild:
            for chunk in _chunks(vm_keys):
                marks = ",".join("(?,?)" for _ in chunk)
                sql = f"SELECT state FROM vms WHERE (namespace, name) IN (VALUES {marks})"
                for (blob,) in db.execute(sql, [part for key in chunk for part in key]):
                    vm = _decode_vm(blob)
                    vms[(vm.namespace, vm.name)] = vm
            for chunk in _chunks(node_keys):
                sql = f"SELECT state FROM nodes WHERE name IN ({','.join('?' * len(chunk))})"
                for (blob,) in db.execute(sql, chunk):
                    node = _decode_node(blob)
                    nodes[node.name] = node
        vm_rows, node_rows = _fold(items, vms, nodes)
        db.executemany(_UPSERT_VM, vm_rows)
        db.executemany(_UPSERT_NODE, node_rows)
        db.executemany(_INDEX, index)
        db.execute(_SET_POSITION, (position,))
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            db.execute("ROLLBACK")
        raise


def _fold(
    items: Sequence[_Item], vms: dict[VMKey, VMState], nodes: dict[str, NodeState]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Apply the events in order; return the touched VM and node rows. Pure CPU work."""
    vm_touched: set[VMKey] = set()
    node_touched: set[str] = set()
    for kind, key, env in items:
        if kind == "vm":
            # The identity comes from the subject: a VM's first event need not be VMCreated.
            base = vms.get(key) or VMState(namespace=key[0], name=key[1])
            vms[key] = apply(base, env)
            vm_touched.add(key)
        else:
            nodes[key] = apply_node(nodes.get(key) or NodeState(name=key), env)
            node_touched.add(key)
    vm_rows = [(*k, vms[k].version, vms[k].status, vms[k].phase, vms[k].node, _encode(vms[k]))
               for k in vm_touched]  # fmt: skip
    node_rows = [(k, nodes[k].version, nodes[k].status, _encode(nodes[k])) for k in node_touched]
    return vm_rows, node_rows


def _chunks(seq: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), _CHUNK):
        yield seq[i : i + _CHUNK]


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it, keeping only errors other than its cancellation."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
