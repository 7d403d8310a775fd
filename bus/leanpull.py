"""A lean reader of one JetStream pull consumer, over its own plain connection.

Replaying the log is the one place where a client's per-message cost is the whole cost: nats-py
builds a `Msg`, parses its headers into a dict, queues it and awaits a callback per message,
~10 µs of CPU here, three times what decoding, hashing and folding the event then costs. A replay
needs none of that: the subject, the reply subject (stream sequence and pending count) and the
payload. This speaks just enough of the NATS client protocol for that (INFO, CONNECT, PING/PONG,
SUB, PUB, MSG/HMSG, -ERR) and slices frames out of one buffer.

It logs in as the nats-py connection beside it did (`bus/leanlogin.py`: TLS, a `.creds` file); a
login it cannot copy raises `LeanUnavailable` before a message is handled, and the caller falls
back to nats-py. The consumer itself is made and deleted through nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Final

from bus.leanlogin import Login, open_lean
from events.errors import BusUnavailable

RawHandler = Callable[[bytes, str, int], None]  # (data, subject, stream sequence)
READ_SIZE: Final = 1 << 20
_CRLF: Final = b"\r\n"


async def lean_pull(
    login: Login, *, next_subject: str, request: bytes, batch: int, handler: RawHandler,
    idle_timeout: float,
) -> int:  # fmt: skip
    """Pull every pending message of the consumer `next_subject` names into `handler`."""
    reader, writer = await open_lean(login, limit=READ_SIZE)
    try:
        inbox = login.inbox + b".lean." + os.urandom(12).hex().encode()
        return await _pull(reader, writer, next_subject=next_subject, request=request, inbox=inbox,
                           batch=batch, handler=handler, idle_timeout=idle_timeout)  # fmt: skip
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _pull(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, next_subject: str,
    request: bytes, inbox: bytes, batch: int, handler: RawHandler, idle_timeout: float,
) -> int:  # fmt: skip
    pull = b"PUB %s %s %d\r\n%s\r\n" % (next_subject.encode(), inbox, len(request), request)
    writer.write(b"SUB %s 1\r\n" % inbox + pull + pull)  # two requests in flight, as nats-py's
    buf = bytearray()
    count = 0
    pending = -1
    while True:
        try:
            async with asyncio.timeout(idle_timeout):  # in place: no read lost to a timer
                chunk = await reader.read(READ_SIZE)
        except TimeoutError as err:
            raise BusUnavailable(f"replay stalled after {count} messages") from err
        if not chunk:
            raise BusUnavailable(f"the server closed the replay after {count} messages")
        buf += chunk
        for op, words, body, end in frames(buf):
            if op == b"PING":
                writer.write(b"PONG\r\n")
            elif op == b"-ERR":
                raise BusUnavailable(f"the server refused the replay: {b' '.join(words)!r}")
            elif op in (b"HMSG", b"MSG"):
                if not (reply := reply_of(op, words)):  # a status: 408 expired, 404 none yet
                    why = status(buf, words, body)
                    if why.split(None, 1)[:1] not in (["408"], ["404"]):
                        raise BusUnavailable(f"the replay's pull request was answered {why!r}")
                    if pending == 0:
                        return count
                    writer.write(pull)
                    continue
                seq, pending = ack_position(reply.decode())
                handler(bytes(buf[body:end]), words[1].decode(), seq)
                count += 1
                if count % batch == 0:
                    writer.write(pull)
                if pending == 0:
                    return count


Frame = tuple[bytes, list[bytes], int, int]  # op, control-line words, payload start and end


def frames(buf: bytearray) -> Iterator[Frame]:
    """The whole frames at the start of `buf`, then what they took is cut from it (a frame not
    all here yet stays): the op (MSG, HMSG, PING, -ERR...), the control line's words, and where
    the payload starts (after an HMSG's headers) and ends. Shared by both lean paths."""
    pos = 0
    while (eol := buf.find(_CRLF, pos)) >= 0:
        words = bytes(buf[pos:eol]).split()
        op = words[0] if words else b""
        if op not in (b"HMSG", b"MSG"):
            pos = eol + 2
            yield op, words, pos, pos
            continue
        end = eol + 2 + int(words[-1])
        if len(buf) < end + 2:
            break  # the rest of this frame is still on its way
        pos = end + 2
        yield op, words, eol + 2 + (int(words[-2]) if op == b"HMSG" else 0), end
    del buf[:pos]


def reply_of(op: bytes, words: list[bytes]) -> bytes:
    """A message's reply subject, or b"" (statuses have none)."""
    return words[3] if len(words) == (6 if op == b"HMSG" else 5) else b""


def status(buf: bytearray, words: list[bytes], body: int) -> str:
    """An HMSG's status ("408 Request Timeout", "503"), or "" for a message that has none."""
    if words[0] != b"HMSG":
        return ""
    first = bytes(buf[body - int(words[-2]) : body]).split(_CRLF, 1)[0]  # NATS/1.0 408 ...
    return first.decode(errors="replace").removeprefix("NATS/1.0").strip()


def ack_position(reply: str) -> tuple[int, int]:
    """(stream sequence, pending) from a JetStream ack subject, v1 or v2 token layout."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[8])
    return int(t[7]), int(t[10])
