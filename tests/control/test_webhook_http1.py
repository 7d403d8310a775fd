"""The webhook dispatcher's HTTP/1.1 client (`orchestrator/webhooks/http1.py`) against real peers.

An aiohttp server stands for a well-behaved endpoint (keep-alive, chunked answers, TLS); a raw
asyncio socket server stands for the odd ones: it reads each request and then does what the
test scripts (answer in pieces, close, stall, talk garbage or out of turn).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from events.errors import ValidationError
from orchestrator.webhooks.connection import MAX_BODY, ConnectionClosed, HttpError
from orchestrator.webhooks.http1 import Endpoint

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
Action = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def endpoint(
    url: str, *, limit: int = 4, timeout_s: float = 5.0,
    headers: list[tuple[str, str]] | None = None, ssl_context: ssl.SSLContext | None = None,
) -> Endpoint:  # fmt: skip
    return Endpoint(url, allowed=LOOPBACK, limit=limit, timeout_s=timeout_s, headers=headers or [],
                    ssl_context=ssl_context)  # fmt: skip


# --- a well-behaved endpoint: aiohttp's server ---------------------------------------------------


class Aio:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes, object]] = []
        self.answer: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append((request.raw_path, dict(request.headers), body, peer))
        if self.answer is not None:
            return await self.answer(request)
        return web.Response(status=200, text="ok")

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Aio:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def aio() -> AsyncIterator[Aio]:
    server = await Aio().start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_post_carries_the_exact_body_and_headers_and_reuses_its_connection(
    aio: Aio,
) -> None:
    ep = endpoint(
        f"http://127.0.0.1:{aio.port}/hook/a b?x=1&y=%2F",
        headers=[("Content-Type", "application/cloudevents+json")],
    )
    try:
        bodies = [b'{"n":%d}' % i for i in range(5)] + [b"", bytes(range(256)) * 40]
        for body in bodies:
            resp = await ep.post(body, [("webhook-id", "evt-1"), ("webhook-timestamp", "12")])
            assert (resp.status, resp.body, resp.headers["content-length"]) == (200, b"ok", "2")
    finally:
        await ep.close()
    assert [r[2] for r in aio.requests] == bodies
    path, headers, _, _ = aio.requests[0]
    assert path == "/hook/a%20b?x=1&y=%2F"
    assert headers["Host"] == f"127.0.0.1:{aio.port}"
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert headers["webhook-id"] == "evt-1" and headers["webhook-timestamp"] == "12"
    assert len({r[3] for r in aio.requests}) == 1  # one connection carried them all


async def test_status_retry_after_and_a_chunked_answer_are_read(aio: Aio) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=503, headers={"Retry-After": "7"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"try ", b"again ", b"later"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    aio.answer = chunked
    ep = endpoint(f"http://127.0.0.1:{aio.port}/")
    try:
        first = await ep.post(b"x")
        aio.answer = None
        second = await ep.post(b"y")  # the same connection, so the chunked body was read to its end
    finally:
        await ep.close()
    assert (first.status, first.headers["retry-after"], first.body) == (
        503,
        "7",
        b"try again later",
    )
    assert second.status == 200 and aio.requests[0][3] == aio.requests[1][3]


async def test_redirects_and_410_are_answers_not_followed(aio: Aio) -> None:
    async def moved(_: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "http://10.0.0.1/"})

    aio.answer = moved
    ep = endpoint(f"http://127.0.0.1:{aio.port}/")
    try:
        assert (await ep.post(b"x")).status == 307
        aio.answer = lambda _: _gone()
        assert (await ep.post(b"x")).status == 410
    finally:
        await ep.close()
    assert len(aio.requests) == 2


async def _gone() -> web.StreamResponse:
    return web.Response(status=410)


async def test_a_long_answer_body_is_not_read_and_its_connection_is_closed(aio: Aio) -> None:
    async def big(_: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=b"z" * (MAX_BODY + 1))

    aio.answer = big
    ep = endpoint(f"http://127.0.0.1:{aio.port}/")
    try:
        resp = await ep.post(b"x")
        aio.answer = None
        again = await ep.post(b"y")
    finally:
        await ep.close()
    assert resp.status == 200 and resp.body == b""
    assert again.status == 200 and aio.requests[0][3] != aio.requests[1][3]


async def test_never_more_requests_in_flight_than_the_limit(aio: Aio) -> None:
    gate = asyncio.Event()
    inflight = {"now": 0, "max": 0}

    async def gated(_: web.Request) -> web.StreamResponse:
        inflight["now"] += 1
        inflight["max"] = max(inflight["max"], inflight["now"])
        await gate.wait()
        inflight["now"] -= 1
        return web.Response(status=204)

    aio.answer = gated
    ep = endpoint(f"http://127.0.0.1:{aio.port}/", limit=3)
    try:
        posts = [asyncio.create_task(ep.post(b"%d" % i), name=f"post-{i}") for i in range(10)]
        for _ in range(200):
            if inflight["now"] == 3:
                break
            await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(*posts)
    finally:
        await ep.close()
    assert inflight["max"] == 3 and [a.status for a in answers] == [204] * 10
    assert len({r[3] for r in aio.requests}) == 3


async def test_tls_with_the_hostname_checked(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = await Aio().start(server_ctx)
    trusting = ssl.create_default_context(cafile=str(cert))
    good = endpoint(f"https://localhost:{server.port}/tls", ssl_context=trusting)
    wrong_name = endpoint(f"https://127.0.0.1:{server.port}/tls", ssl_context=trusting)
    untrusted = endpoint(f"https://localhost:{server.port}/tls")
    try:
        assert (await good.post(b"secret")).status == 200
        for ep in (wrong_name, untrusted):
            with pytest.raises(ssl.SSLCertVerificationError):
                await ep.post(b"secret")
    finally:
        for ep in (good, wrong_name, untrusted):
            await ep.close()
        await server.stop()
    assert [r[2] for r in server.requests] == [b"secret"]


# --- odd endpoints: a raw socket server ----------------------------------------------------------


class Raw:
    """Reads each request (head + Content-Length body), then runs the next scripted action;
    an action returns False to hang up. Without actions left it answers 200 and keeps going."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.requests: list[bytes] = []
        self.connections = 0
        self.eofs = 0  # connections the client closed
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Raw:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()

    async def stall(self, reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> bool:
        await reader.read()  # until the client gives up and closes
        self.eofs += 1
        return False

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eofs += 1
                    return
                size = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:"))  # fmt: skip
                self.requests.append(head + await reader.readexactly(size))
                action = (
                    self.actions.pop(0)
                    if self.actions
                    else answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                )
                if not await action(reader, writer):
                    return
        finally:
            self.writers.discard(writer)
            writer.close()


def answer(*pieces: bytes, keep: bool = True, pause: float = 0.0) -> Action:
    """Write `pieces` one by one (a pause between them lets each arrive on its own)."""

    async def act(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        for p in pieces:
            writer.write(p)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return keep

    return act


async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    return False


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    server = await Raw().start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_chunked_answer_in_pieces_with_extensions_and_trailers(raw: Raw) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = chunked + b"4;ext=1\r\nabcd\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
    raw.actions = [
        answer(*(wire[i : i + 1] for i in range(len(wire))), pause=0.001),
        answer(chunked + b"0\r\n\r\n"),
    ]
    ep = endpoint(raw.url)
    try:
        first = await ep.post(b"x")
        second = await ep.post(b"y")
        third = await ep.post(b"z")
    finally:
        await ep.close()
    assert first.body == b"abcd" + b"z" * 26 and second.body == b""
    assert third.status == 200 and raw.connections == 1


async def test_connection_close_http_1_0_and_a_body_up_to_the_close(raw: Raw) -> None:
    raw.actions = [
        answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", keep=False),
        answer(b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n", keep=False),
        answer(b"HTTP/1.1 200 OK\r\n\r\nall of it", keep=False),
        answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
    ]
    ep = endpoint(raw.url)
    try:
        got = [await ep.post(b"%d" % i) for i in range(5)]
    finally:
        await ep.close()
    assert [(r.status, r.body) for r in got] == [
        (200, b"ok"), (202, b""), (200, b"all of it"), (200, b""), (200, b"")
    ]  # fmt: skip
    assert raw.connections == 4  # the HTTP/1.0 keep-alive one carried the last two


async def test_an_interim_100_continue_is_skipped(raw: Raw) -> None:
    created = b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n!"
    raw.actions = [answer(b"HTTP/1.1 100 Continue\r\n\r\n", created, pause=0.01)]
    ep = endpoint(raw.url)
    try:
        resp = await ep.post(b"x")
    finally:
        await ep.close()
    assert (resp.status, resp.reason, resp.body) == (201, "Created", b"!")


async def test_a_kept_alive_connection_closed_by_the_endpoint_is_retried_once_afresh(
    raw: Raw,
) -> None:
    raw.actions = [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), hang_up]
    ep = endpoint(raw.url)
    try:
        assert (await ep.post(b"first")).status == 200
        assert (await ep.post(b"second")).status == 200  # hung up on, then sent again
    finally:
        await ep.close()
    assert raw.connections == 2 and [r.rsplit(b"\n", 1)[1] for r in raw.requests] == [
        b"first", b"second", b"second"
    ]  # fmt: skip


async def test_a_fresh_connection_closed_without_an_answer_is_an_error(raw: Raw) -> None:
    raw.actions = [hang_up, answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", keep=False)]
    ep = endpoint(raw.url)
    try:
        with pytest.raises(ConnectionClosed, match="before answering") as before:
            await ep.post(b"x")
        with pytest.raises(ConnectionClosed, match="in the middle of its answer") as middle:
            await ep.post(b"y")
        assert (await ep.post(b"z")).status == 200  # the pool recovers
    finally:
        await ep.close()
    assert not before.value.answered and middle.value.answered and raw.connections == 3


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", "not followed by CRLF"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "head is longer than"),
    ],
)
async def test_garbage_fails_the_request_and_closes_its_connection(
    raw: Raw, wire: bytes, error: str
) -> None:
    raw.actions = [answer(wire)]
    ep = endpoint(raw.url)
    try:
        with pytest.raises(HttpError, match=error):
            await ep.post(b"x")
        assert (await ep.post(b"y")).status == 200
    finally:
        await ep.close()
    assert raw.connections == 2


async def test_bytes_out_of_turn_retire_the_connection(raw: Raw) -> None:
    raw.actions = [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")]
    ep = endpoint(raw.url)
    try:
        assert (await ep.post(b"x")).status == 200
        assert (await ep.post(b"y")).status == 200
    finally:
        await ep.close()
    assert raw.connections == 2


async def test_a_stalled_endpoint_times_out_and_its_connection_is_closed(raw: Raw) -> None:
    raw.actions = [raw.stall]
    ep = endpoint(raw.url, timeout_s=0.3, limit=1)
    try:
        with pytest.raises(TimeoutError):
            await ep.post(b"x")
        assert (await ep.post(b"y")).status == 200  # the one allowed connection came back
    finally:
        await ep.close()
    for _ in range(100):
        if raw.eofs >= 1:
            break
        await asyncio.sleep(0.01)
    assert raw.connections == 2 and raw.eofs >= 1


async def test_a_cancelled_post_frees_its_connection(raw: Raw) -> None:
    raw.actions = [raw.stall]
    ep = endpoint(raw.url, limit=1)
    try:
        task = asyncio.create_task(ep.post(b"x"), name="cancelled-post")
        for _ in range(200):
            if raw.requests:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await ep.post(b"y")).status == 200
    finally:
        await ep.close()
    assert raw.connections == 2


async def test_refused_addresses_are_never_dialled(raw: Raw) -> None:
    for url in (raw.url, f"http://localhost:{raw.port}/hook"):
        ep = Endpoint(url, allowed=[], limit=1, timeout_s=5)
        try:
            with pytest.raises(HttpError, match="loopback"):
                await ep.post(b"x")
        finally:
            await ep.close()
    assert raw.connections == 0


async def test_no_listener_is_an_os_error_and_bad_headers_are_refused(raw: Raw) -> None:
    port = raw.port
    await raw.stop()
    ep = endpoint(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(OSError, match="Connect call failed"):
            await ep.post(b"x")
        with pytest.raises(ValidationError) as err:
            await ep.post(b"x", [("webhook-id", "a\r\nX-Evil: 1")])
        assert err.value.field == "webhook-id"
    finally:
        await ep.close()
    with pytest.raises(HttpError, match="closed"):
        await ep.post(b"x")


async def _odd_endpoints() -> list[object]:
    """A few of the cases above on whatever loop runs this."""
    raw = await Raw().start()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    raw.actions = [
        answer(*(chunked[i : i + 1] for i in range(len(chunked))), pause=0.001),
        answer(b"HTTP/1.1 200 OK\r\n\r\nto the end", keep=False),
        answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
        hang_up,
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"),
        raw.stall,
    ]
    ep = endpoint(raw.url, timeout_s=0.3, limit=1)
    out: list[object] = []
    try:
        for i in range(4):
            out.append((await ep.post(b"%d" % i)).body)
        try:
            await ep.post(b"stalled")
        except TimeoutError:
            out.append("timeout")
        out.append((await ep.post(b"after")).status)
    finally:
        await ep.close()
        await raw.stop()
    return [*out, raw.connections]


async def test_the_same_on_uvloop_which_the_dispatcher_runs_on() -> None:
    got = await asyncio.to_thread(uvloop.run, _odd_endpoints())
    # the 4th is hung up on and sent again on a fresh connection, which then stalls
    assert got == [b"abc", b"to the end", b"", b"again", "timeout", 200, 4]
    assert got == await _odd_endpoints()  # and on asyncio's own loop
