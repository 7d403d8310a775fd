"""The lean replay reader against real nats-servers: it must deliver exactly what nats-py does.

Messages with and without headers, one bigger than a read, from a start sequence and through a
subject filter, on servers that ask for a user and password or a token; what it cannot log in to
is said (`LeanUnavailable`) before any message, so the caller falls back to nats-py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from bus.leanlogin import LeanUnavailable, Login, login_from
from bus.leanpull import READ_SIZE, lean_pull
from bus.provision import provision
from bus.reader import pull_all
from bus.server import NatsServer
from bus.store import EventStore
from bus.vms import VMRepository
from events import model as m
from events.errors import BusUnavailable
from events.names import Ref

Got = list[tuple[bytes, str, int]]
# A pull nobody answers: what the login tests send once they are in.
NOWHERE: Final = {"next_subject": "nobody.listens", "request": b"{}", "batch": 10,
                  "handler": lambda *m: None}  # fmt: skip


class AuthServer(NatsServer):
    """A real nats-server that asks clients to log in."""

    def __init__(self, *, data_dir: Path, authorization: dict[str, str]) -> None:
        super().__init__(data_dir=data_dir, port=-1)
        self.authorization = authorization

    def _config(self, ports_dir: Path) -> str:
        conf = json.loads(super()._config(ports_dir))
        conf["authorization"] = self.authorization
        return json.dumps(conf)


def with_login(url: str, login: str) -> str:
    return url.replace("nats://", f"nats://{login}@")


@pytest.fixture
async def alice(tmp_path: Path) -> AsyncIterator[tuple[Client, str]]:
    server = AuthServer(data_dir=tmp_path, authorization={"user": "alice", "password": "s3cret"})
    async with server:
        conn = await nats.connect(with_login(server.url, "alice:s3cret"))
        try:
            await provision(conn.jetstream())
            yield conn, server.url
        finally:
            await conn.close()


async def both(nc: Client, stream: str, **kwargs: object) -> tuple[Got, Got]:
    lean: Got = []
    plain: Got = []
    n = await pull_all(nc, stream, lambda *m: lean.append(m), **kwargs)  # type: ignore[arg-type]
    k = await pull_all(nc, stream, lambda *m: plain.append(m), lean=False, **kwargs)  # type: ignore[arg-type]
    assert (n, k) == (len(lean), len(plain))
    return lean, plain


async def test_the_lean_reader_delivers_what_nats_py_delivers(alice: tuple[Client, str]) -> None:
    nc, _ = alice
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="MIXED", subjects=["mixed.>"]))
    big = bytes(range(256)) * (3 * READ_SIZE // 256)  # three reads' worth in one frame
    for i in range(2500):  # beyond two pull batches of 1000
        if i == 1234:
            await js.publish("mixed.big", big)
        elif i % 2:
            await js.publish(
                f"mixed.h.{i}", b"with headers %d" % i, headers={"Nats-Msg-Id": f"m{i}"}
            )
        else:
            await js.publish(f"mixed.p.{i}", b"plain %d" % i)
    lean, plain = await both(nc, "MIXED")
    assert lean == plain
    assert len(lean) == 2500 and [s for _, _, s in lean] == list(range(1, 2501))
    assert lean[1234] == (big, "mixed.big", 1235)
    lean, plain = await both(nc, "MIXED", start_seq=2000, filter_subjects=["mixed.h.>"])
    assert lean == plain and len(lean) == 251 and lean[0][2] == 2000  # i = 1999, 2001, ...


async def test_a_rebuild_through_the_lean_reader_equals_full_reads(
    alice: tuple[Client, str],
) -> None:
    nc, _ = alice
    store = EventStore(nc)
    refs = [Ref.vm(f"v{i}") for i in range(20)]
    for ref in refs:
        await store.append(ref, [m.VMCreated(spec={"running": False}), m.VMStartRequested()],
                           expected_version=0)  # fmt: skip
    states, count = await VMRepository(store).rebuild()
    assert count == 40
    for ref in refs:
        assert states[ref.prefix] == (await VMRepository(store).get(ref))[0]


async def test_token_logins_are_spoken_too(tmp_path: Path) -> None:
    async with AuthServer(data_dir=tmp_path, authorization={"token": "t0k3n"}) as server:
        conn = await nats.connect(with_login(server.url, "t0k3n"))
        try:
            js = conn.jetstream()
            await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
            for i in range(10):
                await js.publish(f"t.{i}", b"x")
            url = conn.connected_url
            assert url is not None
            login = login_from(url, conn.options)
            assert login is not None and login.fields == {"auth_token": "t0k3n"}
            lean, plain = await both(conn, "T")
            assert lean == plain and len(lean) == 10
        finally:
            await conn.close()


async def test_a_login_it_cannot_make_is_said_before_any_message(
    alice: tuple[Client, str],
) -> None:
    _, url = alice
    wrong = login_from(urlsplit(with_login(url, "alice:wrong")), {})
    assert wrong is not None
    with pytest.raises(LeanUnavailable, match="CONNECT refused"):
        await lean_pull(wrong, **NOWHERE, idle_timeout=2)


async def test_a_peer_that_is_not_nats_is_said_too() -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(LeanUnavailable, match="unexpected greeting"):
            await lean_pull(Login("127.0.0.1", port, {}), **NOWHERE, idle_timeout=2)
    finally:
        server.close()
        await server.wait_closed()


def test_what_the_lean_reader_will_not_try() -> None:
    from urllib.parse import urlparse

    def fields(url: str, options: dict[str, object]) -> dict[str, str] | None:
        login = login_from(urlparse(url), options)
        return None if login is None else login.fields

    plain = "nats://127.0.0.1:4222"
    assert fields(plain, {}) == {}
    assert fields("nats://a:b@h:1", {}) == {"user": "a", "pass": "b"}
    assert fields(plain, {"token": "t"}) == {"auth_token": "t"}
    assert fields(plain, {"tls": object()}) is None  # not an SSLContext: nats-py's own business
    assert fields(plain, {"user_credentials": ("jwt", "seed")}) is None
    assert fields(plain, {"nkeys_seed": "/x.nk"}) is None
    assert fields(plain, {"user": lambda: "a", "password": "b"}) is None
    assert login_from(None, {}) is None
    # A .creds file and TLS are copied: the secured bus's lean paths (tests/busio/test_trust.py)
    ctx = ssl.create_default_context()
    login = login_from(urlparse("tls://h:1"), {"user_credentials": "/x.creds", "tls": ctx})
    assert login == Login("h", 1, {}, creds=Path("/x.creds"), tls=ctx)


async def test_a_stalled_or_refused_replay_is_an_error_not_a_hang(
    alice: tuple[Client, str],
) -> None:
    nc, url = alice
    login = login_from(urlsplit(with_login(url, "alice:s3cret")), {})
    assert login is not None
    # Nothing serves the pull subject: the server says so (503) and the replay ends with it.
    with pytest.raises(BusUnavailable, match="answered '503"):
        await lean_pull(login, **NOWHERE, idle_timeout=5)
    # Something takes the requests and never answers: the replay stalls, and says so.
    sink = await nc.subscribe("nobody.listens")
    try:
        with pytest.raises(BusUnavailable, match="stalled after 0 messages"):
            await lean_pull(login, **NOWHERE, idle_timeout=0.5)
    finally:
        await sink.unsubscribe()
