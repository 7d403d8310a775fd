"""A lean HTTP/1.1 client for webhook POSTs: one endpoint, a pool of keep-alive connections.

Why not aiohttp's client: at 5k deliveries/s it was ~60 % of the dispatcher's CPU (~90 µs per
POST against a lean receiver), more than the rest of a delivery together. A webhook POST needs
little of it: one URL per pool, a body with a Content-Length, then the status, the headers
(`Retry-After`) and the answer's body read (Content-Length, chunked, or up to the close) only
so that the connection can carry the next POST. This does that on an asyncio.Protocol.

The address policy is applied at every new connection: the host is resolved and addresses the
policy refuses are never dialled, so a DNS answer that changes after the subscription was judged
cannot point deliveries into the private network. Redirects are not followed: a 3xx is an answer
like any other. An answer that breaks HTTP/1.1 fails its request and closes its connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import quote, urlsplit

import msgspec

from events.errors import ValidationError, VirtbusError
from orchestrator.webhooks.settings import Net, address_refusal, check_url

MAX_HEAD: Final = 64 * 1024  # status line and headers of one answer
MAX_BODY: Final = 64 * 1024  # an answer body longer than this is not read: the connection closes
IDLE_S: Final = 15.0  # an idle connection older than this is closed rather than reused
USER_AGENT: Final = "virtbus-webhooks"
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


class _Conn(asyncio.Protocol):
    """One connection; it carries one request at a time and parses the answer as it arrives."""

    def __init__(self, pool: Endpoint) -> None:
        self.pool = pool
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
            self.pool._gone(self)
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


class Endpoint:
    """POSTs to one URL over at most `limit` keep-alive connections."""

    def __init__(
        self, url: str, *, allowed: Sequence[Net], limit: int, timeout_s: float,
        headers: Iterable[tuple[str, str]] = (), ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.host, self.port, self._literal = check_url(url)
        parts = urlsplit(url)
        self._allowed = list(allowed)
        self._tls = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self.limit = limit
        self.timeout_s = timeout_s
        target = quote(parts.path or "/", safe="/%!$&'()*+,;=:@~") + (
            "?" + quote(parts.query, safe="/?%!$&'()*+,;=:@~") if parts.query else ""
        )
        try:
            name = f"[{self.host}]" if ":" in self.host else self.host.encode("idna").decode()
        except UnicodeError:
            raise ValidationError(f"url: {self.host!r} is not a host name", field="url") from None
        default = 443 if self._tls else 80
        authority = name if self.port == default else f"{name}:{self.port}"
        fixed = "".join(f"{k}: {v}\r\n" for k, v in _checked(headers))
        self._prefix = (f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n"
                        f"User-Agent: {USER_AGENT}\r\n{fixed}").encode("latin-1")  # fmt: skip
        self._idle: list[_Conn] = []
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(self, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """POST `body`; raises TimeoutError past `timeout_s` (connecting included), HttpError
        for a broken answer, OSError when no connection can be made."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in _checked(headers))
        data = b"".join((self._prefix, extra.encode("latin-1"),
                         b"Content-Length: %d\r\n\r\n" % len(body), body))  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        fresh = False
        while True:
            conn, reused = await self._acquire(deadline, fresh=fresh)
            try:
                return await conn.exchange(data, deadline)
            except ConnectionClosed as err:
                # A kept-alive connection the endpoint closed as we sent: once more, afresh.
                if not reused or err.answered or fresh:
                    raise
                fresh = True
            finally:
                self._release(conn)

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    async def _acquire(self, deadline: float, *, fresh: bool) -> tuple[_Conn, bool]:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise HttpError("the endpoint's connection pool is closed")
            while self._idle and not fresh:
                conn = self._idle.pop()
                if conn.alive and loop.time() - conn.idle_since < IDLE_S:
                    return conn, True
                conn.close()
            if self._open < self.limit:
                break
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:  # (a waiter cancelled by the timeout stays queued; `_wake` skips it)
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken as it gave up: the turn passes on
                raise
        self._open += 1
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._connect()
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        conn.counted = True
        if not conn.alive:  # lost already, before it was counted
            self._gone(conn)
            raise ConnectionClosed("the endpoint closed the connection at once", answered=False)
        return conn, False

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        if self._literal is not None:
            addrs = [self._literal]
        else:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            addrs = list(dict.fromkeys(str(i[4][0]) for i in infos))
        refused = [address_refusal(ipaddress.ip_address(a), self._allowed) for a in addrs]
        allowed = [a for a, why in zip(addrs, refused, strict=True) if why is None]
        if not allowed:
            raise HttpError(f"{self.host}: refused: {next(w for w in refused if w)}"
                            if refused else f"{self.host} has no address")  # fmt: skip
        error: OSError | None = None
        for addr in allowed:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self), addr, self.port, ssl=self._tls,
                    server_hostname=self.host if self._tls else None,
                )  # fmt: skip
                return conn
            except OSError as err:
                error = err
        assert error is not None
        raise error

    def _release(self, conn: _Conn) -> None:
        if conn.alive and conn.fut is None and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        elif conn.alive:
            conn.close()
        self._wake()

    def _gone(self, conn: _Conn) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self._open -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _checked(headers: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    for k, v in headers:
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k:
            raise ValidationError(f"header {k!r}: a line break or colon would split it",
                                  field=k)  # fmt: skip
        yield k, v
