"""An append's messages on their way into JetStream, and the server's answer read.

The store (`bus/store.py`) decides what to append (versions, the hash chain, the expected subject
sequence) and what an answer means for it (a conflict, a duplicate); this module knows only the
wire: one message or an atomic batch (`Nats-Batch-*` headers), the PubAck, and the lean
connection a single append takes where there is one (`bus/leanrequest.py`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable
from typing import Final

import msgspec
from nats.aio.client import Client

from bus.leanlogin import LeanUnavailable, login_of
from bus.leanrequest import LeanRequester
from events.errors import BusUnavailable

WRONG_LAST_SEQ: Final = 10071  # JetStream's err_code: the expected last subject sequence moved
DUPLICATE_IN_BATCH: Final = 10201

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


class Publisher:
    """Sends an append's messages on `nc` (or its own lean connection) and returns the PubAck."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    def send(self, msgs: list[Message], *, within: float) -> Awaitable[PubAck]:
        """One message alone, several as one atomic batch; `Rejected` if the server refuses.

        It hands back the awaitable rather than awaiting it: a single append's hot path saves
        a coroutine hop."""
        if len(msgs) == 1:
            return self._send_single(*msgs[0], within=within)
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
        self, subject: str, raw: bytes, hdrs: dict[str, str], *, within: float
    ) -> PubAck:
        """A one-message append: on the lean connection where there is one (a batch's messages
        must all go one way, so batches never take it)."""
        if (lean := self._lean) is not None:
            try:
                return _acked(await lean.request(subject, raw, hdrs, within=within))
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
