"""The envelope every event travels in (CloudEvents 1.0 structured JSON) and the one codec.

The per-aggregate hash chain lives here: each envelope carries `prevhash`, the SHA-256 of the exact
bytes of the previous event of the same aggregate, so changing, removing or reordering one stored
event breaks the chain at the next one; `Chain` checks it as events stream by.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec
from msgspec.structs import force_setattr

from events.commands import AnyCommand
from events.errors import TamperDetected, ValidationError
from events.model import CE_TYPE, AnyEvent, Event
from events.names import Ref, aggregate_key

GENESIS: Final = ""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """CloudEvents attributes, virtbus extensions, and the event as `data`."""

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    datacontenttype: str = "application/json"
    actor: str = ""
    correlationid: str = ""
    causationid: str = ""
    version: int
    prevhash: str = GENESIS
    traceparent: str = ""  # CloudEvents distributed tracing: the W3C trace this event is part of
    data: AnyEvent


class Recorded(msgspec.Struct, frozen=True, gc=False):
    """An envelope as it sits in the stream: its sequence, subject and the hash of its bytes."""

    envelope: Envelope
    seq: int
    subject: str
    hash: str

    @property
    def actor(self) -> str:
        """Who wrote it (see `attested`: a node's name comes from the subject, not the body)."""
        return self.envelope.actor


class Stamp(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The part of an envelope the VM fold reads. Rebuilding every VM decodes only this: msgspec
    then skips the ids, actor and trace fields rather than making strings of them (half the cost
    of a full decode). The chain is still checked over all the bytes."""

    subject: str
    time: datetime
    version: int
    prevhash: str = GENESIS
    actor: str = ""  # (only a node's, which `attested` sets from the subject, is read)
    data: AnyEvent


Stamped = Envelope | Stamp  # what a fold step needs: the event, its aggregate, version and time

_encoder: Final = msgspec.json.Encoder()
ENVELOPE_DECODER: Final = msgspec.json.Decoder(Envelope)
STAMP_DECODER: Final = msgspec.json.Decoder(Stamp)
COMMAND_DECODER: Final = msgspec.json.Decoder(AnyCommand)
_AT_PATH: Final = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING: Final = re.compile(r"missing required field `([^`]*)`")


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def chain_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def new_id() -> str:
    return os.urandom(16).hex()


def seal(
    event: Event,
    *,
    ref: Ref,
    version: int,
    prevhash: str,
    source: str,
    actor: str = "",
    correlationid: str = "",
    causationid: str = "",
    time: datetime | None = None,
    traceparent: str = "",
) -> tuple[Envelope, bytes]:
    """Wrap `event` for `ref` at `version`, returning the envelope and its exact wire bytes."""
    env = Envelope(
        id=new_id(),
        source=source,
        type=CE_TYPE[type(event)],
        subject=str(ref),
        time=time or datetime.now(UTC),
        actor=actor,
        correlationid=correlationid,
        causationid=causationid,
        version=version,
        prevhash=prevhash,
        traceparent=traceparent,
        data=event,  # type: ignore[arg-type]
    )
    return env, _encoder.encode(env)


T = TypeVar("T", Envelope, Stamp)


def attested(env: T, subject: str) -> T:
    """`env` as decoded from a message on `subject`: an event whose subject ends in a node's name
    (`virt.vm.<ns>.<name>.<type>.<node>`, which on a secured bus only that node may write under)
    is that node's, `node/<node>`, whatever actor its body claims."""
    if subject.count(".") == 5:
        force_setattr(env, "actor", f"node/{subject.rpartition('.')[2]}")
    return env


def decode_envelope(raw: bytes) -> Envelope:
    return ENVELOPE_DECODER.decode(raw)


def field_of(err: msgspec.ValidationError) -> str:
    """The field path msgspec names in a validation error (`spec.replicas`), or ''."""
    text = str(err)
    at = _AT_PATH.search(text)
    path = at.group(1) if at else ""
    if missing := _MISSING.search(text):
        return f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path


def decode_command(raw: bytes) -> AnyCommand:
    """Decode a command, turning any decode failure into a ValidationError naming the field."""
    try:
        command: AnyCommand = COMMAND_DECODER.decode(raw)
        return command
    except msgspec.ValidationError as err:
        field = field_of(err)
        raise ValidationError(f"invalid command: {err}", field=field) from err
    except msgspec.DecodeError as err:
        raise ValidationError(f"command is not valid JSON: {err}") from err


class Chain:
    """Checks version sequence and hash chain per aggregate as events stream by."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict  # every aggregate must start at version 1 (reading from the start)
        self.heads: dict[str, tuple[int, str]] = {}

    def check(self, rec: Recorded) -> None:
        env = rec.envelope
        self.step(aggregate_key(rec.subject), env.version, env.prevhash, rec.hash,
                  seq=rec.seq, subject=rec.subject)  # fmt: skip

    def step(
        self, key: str, version: int, prevhash: str, digest: str, *, seq: int, subject: str
    ) -> None:
        """One event of aggregate `key`: its version and prevhash against the one before it."""
        prev = self.heads.get(key)
        if prev is None:
            prev = (0, "") if self.strict else (version - 1, prevhash)
        if version != prev[0] + 1:
            raise TamperDetected(
                f"{key}: event at seq {seq} has version {version}, expected {prev[0] + 1}",
                subject=subject, seq=seq,
            )  # fmt: skip
        if prevhash != prev[1]:
            raise TamperDetected(
                f"{key}: event at seq {seq} (version {version}) does not chain to the "
                "event before it: it or its predecessor was altered",
                subject=subject, seq=seq,
            )  # fmt: skip
        self.heads[key] = (version, digest)
