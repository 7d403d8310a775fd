"""One HTTP/1.1 connection of a webhook endpoint's pool: it sends one request at a time and
parses the answer as it arrives (status line, headers, a body by Content-Length, chunked, or up
to the close), on an asyncio.Protocol. Apart from the pool (`http1.Endpoint`) so that each
stays short; why the client is hand-made at all is said there.

An answer that breaks HTTP/1.1 fails its request and closes its connection; an answer body
longer than `MAX_BODY` is not read: the connection closes instead.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

import msgspec

from events.errors import VirtbusError

MAX_HEAD: Final = 64 * 1024  # status line and headers of one answer
MAX_BODY: Final = 64 * 1024  # an answer body longer than this is not read: the connection closes
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")
_HEAD, _LENGTH, _CHUNK, _DATA, _TRAILER, _CLOSE = range(6)  # where the answer's parser is


class HttpError(VirtbusError):
    """The endpoint broke HTTP/1.1 or the connection; a later attempt may do better."""

    retryable = True


class ConnectionClosed(HttpError):
    """The endpoint closed the connection before its answer was complete."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # some of the answer had arrived


class Response(msgspec.Struct, frozen=True):
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case; repeated headers joined with ", "
    body: bytes


class Connection(asyncio.Protocol):
    """One connection; it carries one request at a time and parses the answer as it arrives."""

    def __init__(self, on_gone: Callable[[Connection], None]) -> None:
        self.on_gone = on_gone  # the pool's: this connection no longer counts
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self.counted = False  # the pool counts it among its open connections
        self.idle_since = 0.0
        self.fut: asyncio.Future[Response] | None = None
        self.buf = b""
        self.state = _HEAD
        self.answered = False
        self.keep = True
        self.left = 0
        self.parts: list[bytes] = []
        self.head: tuple[int, str, dict[str, str]] = (0, "", {})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof_received()
        self.close()

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.on_gone(self)
        if self.transport is not None:
            self.transport.close()
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionClosed("the connection was closed", answered=True))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.close()

    async def exchange(self, data: bytes, deadline: float) -> Response:
        """Send one request and wait for its whole answer, until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        if not self.alive:
            raise ConnectionClosed("the connection was closed", answered=False)
        fut: asyncio.Future[Response] = loop.create_future()
        self.fut = fut
        self.buf, self.state, self.answered, self.parts = b"", _HEAD, False, []
        assert self.transport is not None
        self.transport.write(data)
        timer = loop.call_at(deadline, self._expire)
        try:
            return await fut
        finally:
            timer.cancel()
            self.fut = None
            if not fut.done():  # cancelled: what is on the wire is unknown
                fut.cancel()
                self.abort()
            elif fut.cancelled() or fut.exception() is not None:
                self.abort()

    def _expire(self) -> None:
        if self.fut is not None and not self.fut.done():  # (answered just in time: keep it)
            self.fut.set_exception(TimeoutError())
            self.abort()

    def eof_received(self) -> bool | None:
        fut = self.fut
        if fut is None or fut.done():
            return None  # the transport closes itself
        if self.state == _CLOSE:  # the body ran up to the close
            self._done(self.buf, keep=False)
            return None
        where = "in the middle of its answer" if self.answered else "before answering"
        msg = f"the endpoint closed the connection {where}"
        fut.set_exception(ConnectionClosed(msg, answered=self.answered))
        return None

    def data_received(self, data: bytes) -> None:
        if self.fut is None or self.fut.done():
            self.abort()  # talking out of turn: not to be trusted with the next request
            return
        self.answered = True
        self.buf = self.buf + data if self.buf else data
        try:
            self._parse()
        except HttpError as err:
            if not self.fut.done():
                self.fut.set_exception(err)
            self.abort()

    def _parse(self) -> None:
        while self.fut is not None and not self.fut.done():
            buf, state = self.buf, self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise HttpError(f"the answer's head is longer than {MAX_HEAD} bytes")
                    return
                self.buf = buf[end + 4 :]
                self._on_head(buf[:end])
            elif state == _LENGTH:
                if len(buf) < self.left:
                    return
                self.buf = buf[self.left :]
                self._done(buf[: self.left], keep=self.keep)
            elif state == _CHUNK:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise HttpError("a chunk-size line longer than 1024 bytes")
                    return
                size = buf[:eol].split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size):
                    raise HttpError(f"a bad chunk size {size[:20]!r}")
                self.buf, self.left = buf[eol + 2 :], int(size, 16)
                if self.left == 0:
                    self.state = _TRAILER
                elif sum(map(len, self.parts)) + self.left > MAX_BODY:
                    self._done(b"", keep=False)  # too long to read: close instead
                else:
                    self.state = _DATA
            elif state == _DATA:
                if len(buf) < self.left + 2:
                    return
                if buf[self.left : self.left + 2] != b"\r\n":
                    raise HttpError("a chunk not followed by CRLF")
                self.parts.append(buf[: self.left])
                self.buf, self.state = buf[self.left + 2 :], _CHUNK
            elif state == _TRAILER:  # none, or trailer fields up to an empty line
                if buf.startswith(b"\r\n"):
                    end = 2
                elif (at := buf.find(b"\r\n\r\n")) >= 0:
                    end = at + 4
                else:
                    if len(buf) > MAX_HEAD:
                        raise HttpError(f"trailers longer than {MAX_HEAD} bytes")
                    return
                self.buf = buf[end:]
                self._done(b"".join(self.parts), keep=self.keep)
            else:  # _CLOSE: everything up to the end of the connection
                if len(buf) > MAX_BODY:
                    self._done(b"", keep=False)
                return

    def _on_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:].isspace() or name[:1].isspace():
                raise HttpError(f"a malformed header line {line[:60]!r}")
            key, val = name.decode("latin-1").lower(), value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        if 100 <= status < 200:
            if status == 101:
                raise HttpError("the endpoint switched protocols")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.keep = version == b"HTTP/1.1"
        if (connection := headers.get("connection")) is not None:
            tokens = {t.strip() for t in connection.lower().split(",")}
            self.keep = "close" not in tokens and (self.keep or "keep-alive" in tokens)
        self.head = (status, reason.decode("latin-1"), headers)
        te, cl = headers.get("transfer-encoding"), headers.get("content-length")
        if status in (204, 304):
            self._done(b"", keep=self.keep)
        elif te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() == "chunked":
                self.state, self.keep = _CHUNK, self.keep and cl is None
            else:
                self.state, self.keep = _CLOSE, False
        elif cl is not None:
            sizes = {v.strip() for v in cl.split(",")}
            size = sizes.pop() if len(sizes) == 1 else ""
            if not (size.isascii() and size.isdigit()):
                raise HttpError(f"a bad Content-Length {cl[:30]!r}")
            self.left = int(size)
            if self.left > MAX_BODY:
                self._done(b"", keep=False)
            else:
                self.state = _LENGTH
        else:
            self.state, self.keep = _CLOSE, False

    def _done(self, body: bytes, *, keep: bool) -> None:
        status, reason, headers = self.head
        assert self.fut is not None
        self.fut.set_result(Response(status, reason, headers, body))
        self.state = _HEAD
        if not keep or self.buf:  # bytes past the answer: the stream is out of step
            self.close()
