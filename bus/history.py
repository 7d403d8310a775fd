"""A VM's history as an auditor reads it: every command, decision and observation, the VM's status
after each, each life of the name apart, and the VM as it was at any moment (time travel).

KubeVirt keeps an hour of Kubernetes events; virtbus keeps the log, so this is only a reading of
it, never a scan: the VM's events by the read model's history index (direct gets of the
sequences it lists, then a subject-filtered read of what came after it), or by a subject-filtered
read of the VM's tree when no orchestrator answers; its commands by a subject-filtered read of the
command stream. Folded by the same pure `apply` the orchestrator decides with; everything past
the reads is pure.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from nats.aio.client import Client

from bus.client import query
from bus.connect import identity
from bus.reader import direct_range, direct_range_headers, direct_seqs
from bus.readscope import read_scope
from bus.store import EventStore
from events import model as m
from events.envelope import Chain, Recorded
from events.errors import TamperDetected, ValidationError, VirtbusError
from events.names import COMMANDS_STREAM, EVENTS_STREAM, Ref
from events.protocol import Query
from events.state import VMState, apply

COMMAND, DECISION, OBSERVATION, REJECTION = "Command", "Decision", "Observation", "Rejection"

# What node workers report; everything else on a VM's tree is the orchestrator deciding.
OBSERVED: Final = frozenset({
    m.LauncherCreated, m.LauncherFailed, m.LauncherDeleted, m.DomainDefined, m.DomainStarted,
    m.DomainPaused, m.DomainResumed, m.DomainStopped, m.DomainUndefined, m.DomainRebooted,
    m.GuestAgentChanged,
    m.MigrationTargetReady, m.MigrationStarted, m.MigrationProgress, m.MigrationSucceeded,
    m.MigrationFailed,
    m.SnapshotSucceeded, m.SnapshotFailed, m.RestoreSucceeded, m.RestoreFailed, m.VolumeAttached,
    m.VolumeAttachFailed, m.VolumeDetached, m.ImagePulled, m.ImagePulling, m.MemoryDumpCompleted,
    m.MemoryDumpFailed, m.HotVCPUChanged, m.HotMemoryChanged, m.HotChangeFailed,
})  # fmt: skip
_BULKY: Final = frozenset({"spec", "volume", "disk", "labels", "annotations"})
_DURATION: Final = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class CommandRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A command as it sits on the command stream: what was asked, by whom, when."""

    id: str
    kind: str
    actor: str
    time: datetime
    seq: int


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a VM's history, with the VM's printable status right after it."""

    time: datetime
    life: int  # 1 for the first VMCreated, +1 at each re-creation; 0 before any
    category: str  # Command, Decision, Observation, Rejection
    type: str
    actor: str
    correlationid: str
    summary: str
    status: str
    phase: str
    version: int
    seq: int


class History(msgspec.Struct, frozen=True):
    ref: Ref
    events: list[Recorded]
    commands: list[CommandRecord]


# --- reading ------------------------------------------------------------------------------------


def command_record(data: bytes, headers: dict[str, str]) -> CommandRecord:
    # Raw bodies, not the command union: a command that failed validation still was asked.
    seq = int(headers["Nats-Sequence"])
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = None
    if not isinstance(body, dict):
        body = {}
    # The id intake judged it under: the body's, else the publisher's Nats-Msg-Id, else `cmd-SEQ`.
    cid = body.get("id") or headers.get("Nats-Msg-Id") or f"cmd-{seq}"
    return CommandRecord(
        id=str(cid), kind=str(body.get("kind", "unknown")), actor=str(body.get("actor", "")),
        time=datetime.fromisoformat(headers["Nats-Time-Stamp"]), seq=seq,
    )  # fmt: skip


# The read model's history index of a VM: its (version, seq) pairs, and the seq it is whole to.
IndexReader = Callable[[Ref], Awaitable[tuple[list[tuple[int, int]], int]]]


async def read_history(
    nc: Client, ref: Ref, *, stream: str = EVENTS_STREAM, indexed: bool = True,
    index_of: IndexReader | None = None,
) -> History:  # fmt: skip
    """The VM's events (hash chain checked) and the commands addressed to it; the index is asked
    of virtbus-api unless the caller holds the read model and passes its `index_of`."""
    scope = read_scope(nc)
    if scope.narrow(stream, [ref.wildcard]) == []:
        who = f'user "{name}"' if (name := identity(nc)) else "these credentials"
        raise ValidationError(f"forbidden: {who} cannot read the history of virtualmachines in "
                              f'the namespace "{ref.namespace}"', field="namespace")  # fmt: skip
    # the index is read by direct gets, which a namespaced user's credentials do not allow
    indexed = indexed and scope.direct
    events = await _indexed_events(nc, ref, stream=stream, index_of=index_of) if indexed else None
    if events is None:
        events = await EventStore(nc, stream=stream).read(ref)
    raw = await direct_range_headers(nc, COMMANDS_STREAM, subject_filter=ref.command_subject(">"))
    return History(ref, events, [command_record(data, h) for data, h in raw])


async def _indexed_events(
    nc: Client, ref: Ref, *, stream: str, index_of: IndexReader | None = None
) -> list[Recorded] | None:
    """The events through the read model's history index: direct gets of the sequences it lists,
    then a filtered read of what came after its position. None whenever the index cannot be
    trusted to be whole (no orchestrator answering, a read model older than the index, a chain
    that does not hold): the caller then reads the VM's subject tree instead."""
    if index_of is not None:
        index, position = await index_of(ref)
    else:
        try:
            answer = await query(nc, Query(what="history", namespace=ref.namespace, name=ref.name),
                                 wait_s=2)  # fmt: skip
        except VirtbusError:
            return None
        index, position = answer.history, answer.position
    if not index or [v for v, _ in index] != list(range(1, len(index) + 1)):
        return None
    raw = await direct_seqs(nc, stream, [seq for _, seq in index])
    known = {seq for _, seq in index}
    tail = await direct_range(nc, stream, subject_filter=ref.wildcard,
                              start_seq=position + 1)  # fmt: skip
    raw.extend(item for item in tail if item[2] not in known)
    store, chain, out = EventStore(nc, stream=stream), Chain(strict=True), []
    try:
        for item in raw:
            if (rec := store.decode(*item)) is None:
                return None
            chain.check(rec)
            out.append(rec)
    except TamperDetected:
        return None  # the subject read says what is wrong, and raises
    return out


# --- time ---------------------------------------------------------------------------------------


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """RFC 3339 (`2026-11-27T08:00:00Z`) or a duration ago (`10m`, `1h30m`, `2d`, `45s`)."""
    value = text.strip()
    if (match := _DURATION.match(value)) and value:
        d, h, mi, s = (int(g or 0) for g in match.groups())
        return (now or datetime.now(UTC)) - timedelta(days=d, hours=h, minutes=mi, seconds=s)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{text!r} is neither an RFC 3339 time (2026-11-27T08:00:00Z) nor a duration "
            "(10m, 1h30m, 2d)", field="time",
        ) from None  # fmt: skip
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- the fold, line by line ----------------------------------------------------------------------


def _summary(e: m.Event) -> str:
    if isinstance(e, m.CommandRejected):
        where = f" (field {e.field})" if e.field else ""
        return f"{e.command} {e.command_id} rejected: {e.reason}{where}"
    if isinstance(e, m.VMCreated):
        return f"runStrategy {e.run_strategy}, from a {e.source_kind}"
    parts = []
    for f in e.__struct_fields__:
        v = getattr(e, f)
        if f in _BULKY and v:
            parts.append(f"{f} changed" if f == "spec" else f"{f}={v.get('name', '...')}"
                         if isinstance(v, dict) else f"{f}=...")  # fmt: skip
        elif v not in ("", None, [], {}, False):
            parts.append(f"{f}={v}")
    return ", ".join(parts)


def _outcome(cmd: CommandRecord, answers: list[Recorded], *, later: bool) -> str:
    for r in answers:
        if isinstance(r.envelope.data, m.CommandRejected):
            e = r.envelope.data
            return f"{cmd.kind}: rejected: {e.reason}" + (f" (field {e.field})" if e.field else "")
    if answers:
        return f"{cmd.kind}: accepted -> {type(answers[0].envelope.data).__name__}"
    return f"{cmd.kind}: accepted, nothing to change" if later else f"{cmd.kind}: no outcome yet"


def _actor(r: Recorded) -> str:
    return r.actor or r.envelope.source.removeprefix("/virtbus/")


class Timeline:
    """The fold, line by line: each event or command becomes an entry carrying the status the
    VM is in right after it. `history` feeds it the log; `--follow` keeps feeding it."""

    def __init__(self) -> None:
        self.state = VMState()
        self.life = 0

    def event(self, r: Recorded) -> Entry:
        env = r.envelope
        if isinstance(env.data, m.VMCreated) and (self.life == 0 or self.state.deleted):
            self.life += 1
        self.state = apply(self.state, env)
        category = (
            REJECTION if isinstance(env.data, m.CommandRejected)
            else OBSERVATION if type(env.data) in OBSERVED else DECISION
        )  # fmt: skip
        return Entry(
            time=env.time, life=self.life, category=category, type=env.type, actor=_actor(r),
            correlationid=env.correlationid, summary=_summary(env.data),
            status=self.state.status, phase=self.state.phase, version=env.version, seq=r.seq,
        )  # fmt: skip

    def command(self, cmd: CommandRecord, *, summary: str, opens_life: bool = False) -> Entry:
        s = self.state
        return Entry(
            time=cmd.time, life=self.life + opens_life, category=COMMAND, type=cmd.kind,
            actor=cmd.actor, correlationid=cmd.id, summary=summary,
            status=s.status if s.version else "", phase=s.phase, version=s.version, seq=cmd.seq,
        )  # fmt: skip


def _opens_life(r: Recorded, t: Timeline) -> bool:
    return isinstance(r.envelope.data, m.VMCreated) and (t.life == 0 or t.state.deleted)


def entries(history: History) -> list[Entry]:
    """Every command and event of the VM in order, each with the status it left the VM in."""
    by_cid: dict[str, list[Recorded]] = {}
    for r in history.events:
        if r.envelope.correlationid:
            by_cid.setdefault(r.envelope.correlationid, []).append(r)
    # A command goes right before its first outcome; one with none, where its time falls.
    before: dict[int, list[CommandRecord]] = {}
    loose: list[CommandRecord] = []
    for cmd in history.commands:
        if answers := by_cid.get(cmd.id):
            before.setdefault(answers[0].seq, []).append(cmd)
        else:
            loose.append(cmd)
    loose.sort(key=lambda c: c.time)
    last = history.events[-1].envelope.time if history.events else None
    t, out = Timeline(), []

    def summary(cmd: CommandRecord) -> str:
        return _outcome(cmd, by_cid.get(cmd.id, []), later=last is not None and last > cmd.time)

    for r in history.events:
        while loose and loose[0].time < r.envelope.time:
            out.append(t.command(cmd := loose.pop(0), summary=summary(cmd)))
        opens = _opens_life(r, t)  # the command that creates the VM belongs to its new life
        for cmd in before.get(r.seq, ()):
            out.append(t.command(cmd, summary=summary(cmd), opens_life=opens))
        out.append(t.event(r))
    out.extend(t.command(cmd, summary=summary(cmd)) for cmd in loose)
    return out


def window(
    items: Iterable[Entry], *, since: datetime | None, until: datetime | None
) -> list[Entry]:
    """Entries within [since, until]; the statuses stay those of the whole fold."""
    return [e for e in items if (since is None or e.time >= since)
            and (until is None or e.time <= until)]  # fmt: skip


def state_at(events: Sequence[Recorded], at: datetime) -> VMState:
    """The VM as the system knew it at `at`: the fold of every event recorded by then."""
    state = VMState()
    for r in events:
        if r.envelope.time > at:
            break
        state = apply(state, r.envelope)
    return state


def entry_object(e: Entry) -> dict[str, Any]:
    """An entry as `-o json|yaml` prints it (times in RFC 3339 with microseconds)."""
    obj: dict[str, Any] = msgspec.to_builtins(e)
    obj["time"] = e.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return obj
