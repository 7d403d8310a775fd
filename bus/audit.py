"""Tamper evidence: signed checkpoints of the log, and the audit that names the first bad event.

Each aggregate's events are hash-chained (`events/envelope.py`), which shows an event deleted,
forged or moved in the middle of a history, never a history cut short at its end. Checkpoints do:
every so often the orchestrator (or `virtbus audit checkpoint`) seals the head (version, sequence,
hash) of every aggregate that changed, HMAC-signed with the audit key, as an event on the `audit`
aggregate. `verify` walks the chains and the checkpoints and reports, per aggregate, the first
event that is not what was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec
from nats.aio.client import Client

from bus.reader import direct_range, pull_all
from bus.store import EventStore
from events.checkpoint import AUDIT_REF, key_id, sign, signature_ok
from events.envelope import Envelope, attested, chain_hash, decode_envelope
from events.errors import ConcurrencyConflict, TamperDetected, ValidationError, VirtbusError
from events.folding import skipped_now
from events.kubevirt import KubeVirtState, apply_kubevirt
from events.model import AuditCheckpoint, AuditHead
from events.names import EVENT_SUBJECTS, EVENTS_STREAM, Ref, aggregate_key, ref_from_subject
from events.nodes import NodeState, apply_node
from events.replicasets import ReplicaSetState, apply_rs
from events.state import VMState, apply
from events.volumes import VolumeState, apply_volume

log = logging.getLogger("virtbus.audit")
KEY_ENV: Final = "VIRTBUS_AUDIT_KEY"
KEY_FILE_ENV: Final = "VIRTBUS_AUDIT_KEY_FILE"
MAX_HEADS: Final = 4000  # per checkpoint: keeps one event well under NATS' 1 MiB payload
SUBJECTS: Final = [s for s in EVENT_SUBJECTS if s != "virt.audit.>"]


def load_key(path: Path | None = None) -> bytes | None:
    """The audit key: from `path`, else $VIRTBUS_AUDIT_KEY, else $VIRTBUS_AUDIT_KEY_FILE."""
    field = "--key-file"
    if path is None and (value := os.environ.get(KEY_ENV)):
        return value.encode()
    if path is None and (env_path := os.environ.get(KEY_FILE_ENV)):
        path, field = Path(env_path), KEY_FILE_ENV
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except OSError as err:
        raise ValidationError(f"{field}: cannot read {path}: {err.strerror}", field=field) from None
    if not key:
        raise ValidationError(f"{field}: {path} is empty", field=field)
    return key


def describe_key(key: bytes | None, *, every_s: float = 60.0) -> str:
    """What the orchestrator will do about checkpoints, for `virtbus up` to say."""
    if key is None:
        return (f"no key (${KEY_ENV} or ${KEY_FILE_ENV}): hash chains only, no signed "
                "checkpoints, so a history cut short at its end goes unseen")  # fmt: skip
    return f"signed checkpoints every {every_s:.0f} s (key id {key_id(key)})"


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """The first bad event of one aggregate (or of the checkpoints)."""

    aggregate: str
    problem: str  # deleted, forged, reordered, rewritten, truncated, unfoldable
    seq: int  # where in the stream it goes bad (findings sort by it)
    version: int
    message: str


class Report(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    events: int
    aggregates: int
    checkpoints: int
    signatures_checked: bool
    sealed_through: int
    key_id: str = ""
    findings: list[Finding] = []
    warnings: list[str] = []


class _Head:
    __slots__ = ("broken", "gap", "hash", "seq", "version")

    def __init__(self, version: int = 0, seq: int = 0, hash_: str = "") -> None:
        self.version, self.seq, self.hash, self.broken = version, seq, hash_, False
        self.gap: tuple[int, int, int] | None = None  # (finding, version, seq) after a gap


# The folds `audit verify` runs beside the chains: (the empty state, the step).
_FOLDS: Final[dict[str, tuple[Any, Callable[[Any, Envelope], Any]]]] = {
    "vm": (VMState(), apply),
    "node": (NodeState(), apply_node),
    "rs": (ReplicaSetState(), apply_rs),
    "vmpool": (ReplicaSetState(), apply_rs),
    "volume": (VolumeState(), apply_volume),
    "kubevirt": (KubeVirtState(), apply_kubevirt),
}


def _name(key: str) -> str:
    ref = ref_from_subject(key + ".x")
    return str(ref) if ref else key


class Sealed(msgspec.Struct, frozen=True):
    head: AuditHead
    number: int
    through: int


def _judge(
    a: _Head, s: Sealed | None, *, v: int, h: str, seq: int, prevhash: str
) -> tuple[str, int, int, str] | None:
    """(problem, where, version, message) when event `v` at `seq` cannot follow head `a`."""
    after = f"version {a.version} (seq {a.seq})" if a.version else "the start"
    if v <= a.version:
        return "reordered", seq, v, f"seq {seq} holds version {v} after {after}: reordered"
    if v > a.version + 1:
        gone = f"{a.version + 1}" + (f"..{v - 1}" if v - 1 > a.version + 1 else "")
        msg = f"version {gone} missing: after {after} comes version {v} at seq {seq}; deleted"
        return "deleted", a.seq + 1, a.version + 1, msg
    if prevhash != a.hash:
        msg = f"version {v} at seq {seq} does not chain to {after}: forged or altered"
        return "forged", seq, v, msg
    if s and v <= s.head.version and seq > s.through:
        msg = (f"version {v} is at seq {seq}, but checkpoint #{s.number} sealed this history at "
               f"version {s.head.version} through seq {s.through}: re-written since")  # fmt: skip
        return "rewritten", seq, v, msg
    if s and v == s.head.version and (seq != s.head.seq or h != s.head.hash):
        msg = (f"checkpoint #{s.number} sealed version {v} as seq {s.head.seq} (hash "
               f"{s.head.hash[:12]}), the stream has seq {seq} (hash {h[:12]}): "
               "forged")  # fmt: skip
        return "forged", seq, v, msg
    return None


class Walker:
    """Follows each aggregate's chain through the stream, checking it against the checkpoints.

    From the start of the stream every history must begin at version 1; from a checkpoint on
    (`resume`), a sealed aggregate continues from its sealed head.
    """

    def __init__(
        self, sealed: dict[str, Sealed], *, resume: bool = False, fold: bool = False
    ) -> None:
        self.sealed = sealed
        # Folding too (`audit verify`) names the events a fold skips: a foreign writer's junk.
        self.folds: dict[str, Any] | None = {} if fold else None
        self.heads: dict[str, _Head] = {}
        self.findings: list[Finding] = []
        self.events = 0
        self.last_seq = 0
        if resume:
            for key, s in sealed.items():
                self.heads[key] = _Head(s.head.version, s.head.seq, s.head.hash)

    def _bad(self, key: str, head: _Head, *, problem: str, seq: int, version: int,
             message: str) -> None:  # fmt: skip
        head.broken = True
        self.findings.append(Finding(aggregate=_name(key), problem=problem, seq=seq,
                                     version=version, message=message))  # fmt: skip

    def feed(self, data: bytes, subject: str, seq: int) -> None:
        key = aggregate_key(subject)
        a = self.heads.get(key)
        if a is None:
            a = self.heads[key] = _Head()
        self.last_seq = max(self.last_seq, seq)
        if a.broken:
            self._moved(a, data, seq)
            return  # past the first bad event, nothing of this history can be trusted
        self.events += 1
        try:
            env = attested(decode_envelope(data), subject)
        except (msgspec.DecodeError, msgspec.ValidationError):
            msg = f"seq {seq} is not a virtbus event (it does not decode): forged"
            self._bad(key, a, problem="forged", seq=seq, version=a.version + 1, message=msg)
            return
        v, h = env.version, chain_hash(data)
        bad = _judge(a, self.sealed.get(key), v=v, h=h, seq=seq, prevhash=env.prevhash)
        if bad is None:
            a.version, a.seq, a.hash = v, seq, h
            if self.folds is not None:
                self._fold(key, env, seq)
        else:
            self._bad(key, a, problem=bad[0], seq=bad[1], version=bad[2], message=bad[3])
            if bad[0] == "deleted":
                a.gap = (len(self.findings) - 1, v, seq)

    def _fold(self, key: str, env: Envelope, seq: int) -> None:
        step = _FOLDS.get(key.split(".")[1])
        if step is None or self.folds is None:
            return
        before = self.folds.get(key)
        after = self.folds[key] = step[1](before or step[0], env)
        if (skip := skipped_now(before, after)) is not None:
            self.findings.append(Finding(
                aggregate=_name(key), problem="unfoldable", seq=seq, version=env.version,
                message=f"seq {seq} ({skip.type}) cannot be folded and is skipped by every "
                        f"reader: {skip.reason}",
            ))  # fmt: skip

    def _moved(self, a: _Head, data: bytes, seq: int) -> None:
        """A 'missing' version that turns up later in the stream was moved, not deleted."""
        if a.gap is None:
            return
        index, after, after_seq = a.gap
        f = self.findings[index]
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            if decode_envelope(data).version == f.version:
                msg = (f"version {f.version} is at seq {seq}, after version {after} at seq "
                       f"{after_seq}: reordered")  # fmt: skip
                self.findings[index] = msgspec.structs.replace(f, problem="reordered", message=msg)
                a.gap = None

    def finish(self, only: str | None = None) -> list[Finding]:
        """Findings in stream order, with every sealed head the stream no longer reaches."""
        for key, s in self.sealed.items():
            if only is not None and key != only:
                continue
            a = self.heads.get(key) or _Head()
            if a.broken or a.version >= s.head.version:
                continue
            ends = f"version {a.version} (seq {a.seq})" if a.version else "nothing"
            gone = f"{a.version + 1}" + (f"..{s.head.version}" if s.head.version > a.version + 1
                                         else "")  # fmt: skip
            self._bad(key, a, problem="truncated", seq=a.seq + 1, version=a.version + 1, message=(
                f"truncated: the stream ends at {ends}, but checkpoint #{s.number} sealed "
                f"version {s.head.version} at seq {s.head.seq}; version {gone} gone"))  # fmt: skip
        return sorted(self.findings, key=lambda f: f.seq)


class Checkpoints(msgspec.Struct):
    sealed: dict[str, Sealed]
    findings: list[Finding]
    count: int = 0
    version: int = 0  # of the audit aggregate
    through: int = 0
    number: int = 0
    signature: str = ""


async def load_checkpoints(nc: Client, *, key: bytes | None, stream: str) -> Checkpoints:
    """Every checkpoint up to the first bad one, and the heads they seal."""
    raw = await direct_range(nc, stream, subject_filter=AUDIT_REF.wildcard)
    chain = Walker({})
    out = Checkpoints({}, [])
    for data, subject, seq in raw:
        chain.feed(data, subject, seq)
        if chain.findings:
            out.findings = chain.findings
            break
        cp = decode_envelope(data).data
        problem = ""
        if not isinstance(cp, AuditCheckpoint):
            problem = f"seq {seq} on the audit trail is a {type(cp).__name__}, not a checkpoint"
        elif key is not None and cp.key_id != key_id(key):
            problem = f"checkpoint #{cp.number} at seq {seq} is signed with key {cp.key_id}"
        elif key is not None and not signature_ok(cp, key):
            problem = f"checkpoint #{cp.number} at seq {seq}: the signature does not match"
        elif cp.number != out.number + 1 or cp.previous != out.signature:
            problem = f"checkpoint #{cp.number} at seq {seq} does not follow #{out.number}"
        if problem or not isinstance(cp, AuditCheckpoint):
            bad = Finding(aggregate=str(AUDIT_REF), problem="forged", seq=seq,
                          version=out.count + 1, message=problem + ": forged")  # fmt: skip
            out.findings = [bad]
            break
        for k, head in cp.heads.items():
            out.sealed[k] = Sealed(head, cp.number, cp.through_seq)
        out.count += 1
        out.version, out.number, out.signature = out.count, cp.number, cp.signature
        out.through = max(out.through, cp.through_seq)
    return out


async def verify(
    nc: Client, *, key: bytes | None, ref: Ref | None = None, stream: str = EVENTS_STREAM
) -> Report:
    """Walk the chains (one aggregate's, or all of them) and the checkpoints."""
    cps = await load_checkpoints(nc, key=key, stream=stream)
    walker = Walker(cps.sealed, fold=True)
    if ref is None:
        await pull_all(nc, stream, walker.feed, filter_subjects=SUBJECTS)
    else:
        for item in await direct_range(nc, stream, subject_filter=ref.wildcard):
            walker.feed(*item)
    findings = cps.findings + walker.finish(ref.prefix if ref else None)
    warnings = []
    if key is None and cps.count:
        warnings.append(
            f"no audit key ({KEY_ENV} or --key-file): checkpoint signatures not checked"
        )
    if not cps.count:
        warnings.append("no checkpoints yet: a history cut short at its end cannot be detected")
    elif walker.last_seq > cps.through:
        warnings.append(f"events after seq {cps.through} are not sealed by a checkpoint yet")
    return Report(
        ok=not findings, events=walker.events, aggregates=len(walker.heads),
        checkpoints=cps.count, signatures_checked=key is not None, sealed_through=cps.through,
        key_id=key_id(key) if key else "", findings=sorted(findings, key=lambda f: f.seq),
        warnings=warnings,
    )  # fmt: skip


class Checkpointer:
    """Seals the log every so often: the orchestrator runs one; `audit checkpoint` runs it once."""

    def __init__(self, nc: Client, key: bytes, *, stream: str = EVENTS_STREAM) -> None:
        self.nc = nc
        self.key = key
        self.stream = stream
        self.store = EventStore(nc, source="/virtbus/orchestrator/audit", stream=stream)

    async def checkpoint(self) -> list[AuditCheckpoint]:
        """Seal what changed since the last checkpoint; [] when nothing did."""
        cps = await load_checkpoints(self.nc, key=self.key, stream=self.stream)
        if cps.findings:
            raise TamperDetected(f"not sealing a broken audit trail: {cps.findings[0].message}",
                                 subject=AUDIT_REF.wildcard, seq=cps.findings[0].seq)  # fmt: skip
        walker = Walker(cps.sealed, resume=True)
        await pull_all(self.nc, self.stream, walker.feed, filter_subjects=SUBJECTS,
                       start_seq=cps.through + 1)  # fmt: skip
        if bad := walker.finish():
            raise TamperDetected(
                f"not sealing a broken history: {bad[0].aggregate}: {bad[0].message}",
                subject=bad[0].aggregate,
                seq=bad[0].seq,
            )
        changed = {
            k: AuditHead(h.version, h.seq, h.hash)
            for k, h in walker.heads.items()
            if (s := cps.sealed.get(k)) is None or s.head.version != h.version
        }
        keys = sorted(changed)  # fmt: skip
        out, number, previous = [], cps.number, cps.signature
        for i in range(0, len(keys), MAX_HEADS):
            number += 1
            cp = sign(AuditCheckpoint(
                number=number, through_seq=walker.last_seq, previous=previous,
                heads={k: changed[k] for k in keys[i : i + MAX_HEADS]},
            ), self.key)  # fmt: skip
            out.append(cp)
            previous = cp.signature
        if out:
            await self.store.append(AUDIT_REF, out, expected_version=cps.version)
        return out

    async def run(self, stop: asyncio.Event, *, every_s: float) -> None:
        """Seal every `every_s` seconds, and once more on the way out."""
        while True:
            try:
                sealed = await self.checkpoint()
                if sealed:
                    log.info("checkpoint #%d sealed %d aggregates through seq %d",
                             sealed[-1].number, sum(len(c.heads) for c in sealed),
                             sealed[-1].through_seq)  # fmt: skip
            except ConcurrencyConflict:
                pass  # another orchestrator sealed first; the next round carries on from it
            except VirtbusError as err:
                log.error("audit checkpoint failed: %s", err)
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                continue
