"""A lean reader of one JetStream pull consumer, over its own plain connection.

Replaying the log is the one place where a client's per-message cost is the whole cost: nats-py
builds a `Msg`, parses its headers into a dict, queues it and awaits a callback per message,
~10 µs of CPU here, three times what decoding, hashing and folding the event then costs. A replay
needs none of that: the subject, the reply subject (stream sequence and pending count) and the
payload. This speaks just enough of the NATS client protocol for that (INFO, CONNECT, PING/PONG,
SUB, PUB, MSG/HMSG, -ERR) and slices frames out of one buffer.

It only serves plain `nats://` connections with no credentials, a user and password, or a token;
anything else (TLS, nkeys, JWTs) raises `LeanUnavailable` before a message is handled, and the
caller falls back to nats-py. The consumer itself is made and deleted through nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import ParseResult

from events.errors import BusUnavailable

RawHandler = Callable[[bytes, str, int], None]  # (data, subject, stream sequence)
READ_SIZE: Final = 1 << 20
_CRLF: Final = b"\r\n"


class LeanUnavailable(Exception):
    """This connection cannot be made the lean way: use nats-py instead."""


def credentials(url: ParseResult | None, options: dict[str, Any]) -> dict[str, str] | None:
    """CONNECT's auth fields for `url` and nats-py's options, or None when the lean reader
    cannot log in the way nats-py did (TLS, nkeys, JWTs, callables)."""
    if url is None or url.scheme != "nats" or options.get("tls"):
        return None
    if any(options.get(k) for k in ("user_credentials", "nkeys_seed", "nkeys_seed_str")):
        return None
    user, password = url.username or options.get("user"), url.password or options.get("password")
    token = options.get("token")
    if user and not password and not token:  # nats://TOKEN@host puts the token in the user
        return {"auth_token": user} if isinstance(user, str) else None
    out: dict[str, str] = {}
    for key, value in (("user", user), ("pass", password), ("auth_token", token)):
        if value is None:
            continue
        if not isinstance(value, str):
            return None
        out[key] = value
    return out


async def lean_pull(
    url: ParseResult, auth: dict[str, str], *, next_subject: str, request: bytes,
    batch: int, handler: RawHandler, idle_timeout: float,
) -> int:  # fmt: skip
    """Pull every pending message of the consumer `next_subject` names into `handler`."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname or "127.0.0.1", url.port or 4222, limit=READ_SIZE),
            5,
        )
    except (OSError, TimeoutError) as err:
        raise LeanUnavailable(f"cannot connect: {err}") from err
    try:
        await handshake(reader, writer, auth)
        return await _pull(reader, writer, next_subject=next_subject, request=request,
                           batch=batch, handler=handler, idle_timeout=idle_timeout)  # fmt: skip
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: dict[str, str]
) -> None:
    """INFO, CONNECT and a PING answered: the connection is ready, or LeanUnavailable says why."""
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
    except (OSError, TimeoutError) as err:
        raise LeanUnavailable(f"no INFO from the server: {err}") from err
    if not line.startswith(b"INFO "):
        raise LeanUnavailable(f"unexpected greeting {line[:40]!r}")
    info = json.loads(line[5:])
    if info.get("tls_required") or not info.get("headers"):
        raise LeanUnavailable("the server wants TLS or cannot send headers")
    connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
               "protocol": 1, "lang": "python-virtbus-lean", "version": "1", **auth}  # fmt: skip
    writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
        except (OSError, TimeoutError) as err:
            raise LeanUnavailable(f"no answer to CONNECT: {err}") from err
        if line.startswith(b"PONG"):
            return
        if line.startswith(b"-ERR") or not line:
            raise LeanUnavailable(f"CONNECT refused: {line.strip()[:200]!r}")


async def _pull(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, next_subject: str,
    request: bytes, batch: int, handler: RawHandler, idle_timeout: float,
) -> int:  # fmt: skip
    inbox = b"_INBOX.lean." + os.urandom(12).hex().encode()
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
