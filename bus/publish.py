"""An append's messages on their way into JetStream, and the server's answer read.

The store (`bus/store.py`) decides what to append (versions, the hash chain, the expected subject
sequence) and what an answer means for it (a conflict, a duplicate); this module knows only the
wire: one message or an atomic batch (`Nats-Batch-*` headers), the PubAck, and the lean
connection a single append takes where there is one (`bus/leanrequest.py`).

And it rides out a stream leader's election (a cluster's server lost): an append that gets no
answer, a 503, or JetStream's "temporarily unavailable" is sent again, the same bytes under the
same `Nats-Msg-Id`, with a back-off, for a bounded time. The expected-sequence header makes a
resend of an append that did land fail rather than land twice; that failure (or the server's
duplicate flag) is then told apart from a real conflict by reading, from the stream's leader,
the message after the expected one: if it holds our bytes, the first attempt landed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client

from bus.leanlogin import LeanUnavailable, login_of
from bus.leanrequest import LeanRequester
from events.errors import BusUnavailable

log = logging.getLogger("virtbus.publish")
WRONG_LAST_SEQ: Final = 10071  # JetStream's err_code: the expected last subject sequence moved
# A replicated stream's leader says this instead while another append to the subject is in flight
# (proposed, not committed: a leader cut off from its peers holds it until it steps down) ...
# ... and this while an append with the same message id is in flight (a resend's own attempt).
# Both are undecided, not refused: sent again until the one in flight settles (ms on a sound
# leader; then a conflict or a duplicate says what became of it) or `retry_for` runs out.
IN_FLIGHT: Final = 10164
MSG_ID_IN_FLIGHT: Final = 10158
DUPLICATE_IN_BATCH: Final = 10201
# A batch whose commit reached a server that never saw its first messages (restarted, or the
# leader changed between them), or one the server had no room for: nothing of it is stored.
INCOMPLETE_BATCH: Final = 10176
RETRY_FOR_S: Final = 20.0  # a leader election takes seconds; a dead bus is said after this
_LEADER_GET_S: Final = 2.0
_PAUSES: Final = (0.05, 0.1, 0.25, 0.5, 1.0)  # between resends (ADR-22: Go retries 250 ms apart)

Message = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


class ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_ACK: Final = msgspec.json.Decoder(PubAck)


class Rejected(Exception):
    """JetStream refused the append; `err` says why."""

    def __init__(self, err: ApiError) -> None:
        super().__init__(err.description)
        self.err = err


def _acked(reply: bytes) -> PubAck:
    ack = _ACK.decode(reply)
    if ack.error:
        raise Rejected(ack.error)
    return ack


@dataclass(frozen=True)
class Landing:
    """Where an append's first message lands if it lands: the first message on `subjects` after
    `after` (the expected last subject sequence)."""

    subjects: str
    after: int


def _undecided(err: Exception) -> bool:
    """Whether `err` says an append with this message id, or to this subject, is in flight."""
    return isinstance(err, Rejected) and err.err.err_code in (MSG_ID_IN_FLIGHT, IN_FLIGHT)


def _passing(err: Exception) -> bool:
    """Whether `err` is what a stream without a leader answers (a lost answer, a 503), or an
    atomic batch the server lost part of: sent again whole."""
    return isinstance(err, BusUnavailable) or (
        isinstance(err, Rejected) and (err.err.code == 503 or err.err.err_code == INCOMPLETE_BATCH)
    )


class Publisher:
    """Sends an append's messages on `nc` (or its own lean connection) and returns the PubAck."""

    def __init__(self, nc: Client, *, stream: str = "", retry_for: float = RETRY_FOR_S) -> None:
        self.nc = nc
        self.stream = stream
        self.retry_for = retry_for
        self.resent = 0  # appends sent again after a lost answer (a leader election, mostly)

    async def recover(
        self, err: Exception, msgs: list[Message], *, within: float, landing: Landing
    ) -> PubAck:
        """After `send(msgs)` failed with `err`: raise it again unless it is what a leader's
        election looks like; then send again while the bus cannot answer (for `retry_for`
        seconds), and return the PubAck of the attempt that landed, which a resend may only have
        found (`duplicate` False then). Kept off `send`'s path: an append that is answered pays
        nothing for it."""
        if not (_passing(err) or _undecided(err)):
            raise err
        loop = asyncio.get_running_loop()
        deadline, attempt = loop.time() + self.retry_for, 0
        while True:
            attempt = await self._pause(attempt)
            refused: Rejected | None = None
            try:
                # (through nats-py, which finds a server that answers: the lean connection
                # knows only the one it was made to)
                ack = await self.send(msgs, within=within, lean=False)
            except Rejected as rej:
                if (_passing(rej) or _undecided(rej)) and loop.time() < deadline:
                    continue
                if _undecided(rej):  # an earlier attempt is still in flight: it may yet land
                    why = f"append to {self.stream}: its outcome is unknown: {rej} (a leader "
                    raise BusUnavailable(why + "that cannot commit it, cut off?)") from rej
                if rej.err.err_code not in (WRONG_LAST_SEQ, DUPLICATE_IN_BATCH):
                    raise
                refused, ack = rej, PubAck()
            except BusUnavailable:
                if loop.time() >= deadline:
                    raise
                continue
            if not (refused or ack.duplicate):
                return ack
            # Refused as a conflict, or found a duplicate: did an earlier attempt land?
            if (seq := await self._landed(msgs[0][1], landing)) is not None:
                return PubAck(seq=seq + len(msgs) - 1)  # an atomic batch is stored contiguously
            if refused is not None:
                raise refused
            return ack  # a duplicate of another call's (the same command id)

    async def _pause(self, attempt: int) -> int:
        log.info("append to %s: no answer, sending it again (attempt %d)", self.stream, attempt + 2)
        await asyncio.sleep(_PAUSES[min(attempt, len(_PAUSES) - 1)])
        self.resent += attempt == 0
        if (lean := self.__dict__.pop("_lean", None)) is not None:
            lean.close()  # its server may be the one lost: the next is made to nats-py's current
        return attempt + 1

    async def _landed(self, first: bytes, landing: Landing) -> int | None:
        """The sequence `first` was stored at after `landing.after`, or None if another
        message is there. Asked of the stream's leader (a follower may not have it yet); of any
        replica if the leader's get is not allowed to this login (credentials issued before it
        was) or gets no answer."""
        req = json.dumps({"seq": landing.after + 1, "next_by_subj": landing.subjects}).encode()
        try:
            reply = await self.nc.request(f"$JS.API.STREAM.MSG.GET.{self.stream}", req,
                                          timeout=_LEADER_GET_S)  # fmt: skip
            found = json.loads(reply.data).get("message") or {}
            data, seq = base64.b64decode(found.get("data") or b""), int(found.get("seq") or 0)
        except Exception:  # a timeout, no responders, an answer that is not a message
            try:
                reply = await self.nc.request(f"$JS.API.DIRECT.GET.{self.stream}", req, timeout=5)
            except Exception as err:
                why = f"append to {self.stream}: its outcome is unknown: {err!r}"
                raise BusUnavailable(why) from err
            headers = reply.headers or {}
            data, seq = reply.data, int(headers.get("Nats-Sequence") or 0)
        return seq if seq and data == first else None

    def send(self, msgs: list[Message], *, within: float, lean: bool = True) -> Awaitable[PubAck]:
        """One message alone, several as one atomic batch; `Rejected` if the server refuses.

        It hands back the awaitable rather than awaiting it: a single append's hot path saves
        a coroutine hop."""
        if len(msgs) == 1:
            return self._send_single(*msgs[0], within=within, lean=lean)
        return self._send_batch(msgs, within=within)

    async def _request(self, msg: Message, *, within: float) -> bytes:
        subject, raw, hdrs = msg
        try:
            reply = await self.nc.request(subject, raw, timeout=within, headers=hdrs)
        except Exception as err:  # timeouts, no responders, a closed connection
            raise BusUnavailable(f"append to {subject} got no answer: {err!r}") from err
        return reply.data

    @functools.cached_property
    def _lean(self) -> LeanRequester | None:
        """The append connection of its own, decided at the first single append (None: this
        login is nats-py's alone)."""
        login = login_of(self.nc)
        return LeanRequester(login) if login is not None else None

    async def _send_single(
        self, subject: str, raw: bytes, hdrs: dict[str, str], *, within: float, lean: bool
    ) -> PubAck:
        """A one-message append: on the lean connection where there is one (a batch's messages
        must all go one way, so batches never take it)."""
        if lean and (requester := self._lean) is not None:
            try:
                return _acked(await requester.request(subject, raw, hdrs, within=within))
            except LeanUnavailable:
                pass  # nothing was sent: nats-py sends it (and waits out a server restart)
        return _acked(await self._request((subject, raw, hdrs), within=within))

    async def _send_batch(self, msgs: list[Message], *, within: float) -> PubAck:
        batch_id = uuid.uuid4().hex
        last = len(msgs)
        for n, (subject, raw, own) in enumerate(msgs, 1):
            hdrs = {**own, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
            if n == last:
                hdrs["Nats-Batch-Commit"] = "1"
                return _acked(await self._request((subject, raw, hdrs), within=within))
            if n == 1:  # the server answers the first message only if it refuses the batch
                reply = await self._request((subject, raw, hdrs), within=within)
                if reply and (err := _ACK.decode(reply).error):
                    raise Rejected(err)
            else:
                await self.nc.publish(subject, raw, headers=hdrs)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the lean connection, if one was made."""
        if (lean := self.__dict__.get("_lean")) is not None:
            lean.close()
