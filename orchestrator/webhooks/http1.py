"""A lean HTTP/1.1 client for webhook POSTs: one endpoint, a pool of keep-alive connections.

Why not aiohttp's client: at 5k deliveries/s it was ~60 % of the dispatcher's CPU (~90 µs per
POST against a lean receiver), more than the rest of a delivery together. A webhook POST needs
little of it: one URL per pool, a body with a Content-Length, then the status, the headers
(`Retry-After`) and the answer's body read (Content-Length, chunked, or up to the close) only
so that the connection can carry the next POST. `connection.py` does that on an
asyncio.Protocol; this module is the pool of such connections for one URL.

The address policy is applied at every new connection: the host is resolved and addresses the
policy refuses are never dialled, so a DNS answer that changes after the subscription was judged
cannot point deliveries into the private network. Redirects are not followed: a 3xx is an answer
like any other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import quote, urlsplit

from events.errors import ValidationError
from orchestrator.webhooks.connection import Connection, ConnectionClosed, HttpError, Response
from orchestrator.webhooks.settings import Net, address_refusal, check_url

IDLE_S: Final = 15.0  # an idle connection older than this is closed rather than reused
USER_AGENT: Final = "virtbus-webhooks"


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
        self._idle: list[Connection] = []
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

    async def _acquire(self, deadline: float, *, fresh: bool) -> tuple[Connection, bool]:
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

    async def _connect(self) -> Connection:
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
                    lambda: Connection(self._gone), addr, self.port, ssl=self._tls,
                    server_hostname=self.host if self._tls else None,
                )  # fmt: skip
                return conn
            except OSError as err:
                error = err
        assert error is not None
        raise error

    def _release(self, conn: Connection) -> None:
        if conn.alive and conn.fut is None and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        elif conn.alive:
            conn.close()
        self._wake()

    def _gone(self, conn: Connection) -> None:
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
