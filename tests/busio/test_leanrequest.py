"""Appends over the store's own lean connection, against real nats-servers.

Every single-message append of the suite already goes this way (tests/test_store.py checks
concurrency, idempotency and conflicts through it); here: what a peer sees of the frames, the
answers it cannot get (no stream, no answer), and a server that restarts under an idle store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
from nats.aio.msg import Msg

from bus.cluster import free_ports
from bus.leanlogin import Login, login_from
from bus.leanrequest import LeanRequester
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import model as m
from events.errors import BusUnavailable
from events.names import Ref


def plain(url: str) -> Login:
    login = login_from(urlsplit(url), {})
    assert login is not None
    return login


async def test_a_peer_sees_the_headers_and_bytes_sent_and_answers_back(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    seen: list[Msg] = []

    async def answer(msg: Msg) -> None:
        seen.append(msg)
        await msg.respond(b"pong:" + msg.data)

    sub = await nc.subscribe("lean.echo", cb=answer)
    lean = LeanRequester(plain(nats_server.url))
    try:
        # Many appends that find no connection yet make one between them, not one each.
        first = await asyncio.gather(*(lean.request("lean.echo", b"f%d" % i, {}, within=5)
                                       for i in range(20)))  # fmt: skip
        assert first == [b"pong:f%d" % i for i in range(20)]
        seen.clear()
        # A value with line breaks cannot smuggle in a header of its own.
        hdrs = {"Nats-Msg-Id": "c1/vm/default/a/0", "X-Note": "one\r\nX-Evil: 1"}
        got = await lean.request("lean.echo", b"\x00payload\r\nwith CRLF", hdrs, within=5)
        assert got == b"pong:\x00payload\r\nwith CRLF"
        [msg] = seen
        assert msg.headers == {"Nats-Msg-Id": "c1/vm/default/a/0", "X-Note": "one  X-Evil: 1"}
        many = await asyncio.gather(*(lean.request("lean.echo", b"%d" % i, {}, within=5)
                                      for i in range(200)))  # fmt: skip
        assert many == [b"pong:%d" % i for i in range(200)]  # each answer to its own request
    finally:
        lean.close()
        await sub.unsubscribe()
        await nc.close()


async def test_no_stream_and_no_answer_are_bus_errors(tmp_path: Path) -> None:
    # A server of its own: on the suite's shared one, a wildcard subscriber another test left
    # behind would take these requests, and "no responders" would never come.
    async with NatsServer(data_dir=tmp_path, port=-1) as server:
        nc = await nats.connect(server.url)
        await nc.subscribe("lean.sink")  # takes requests, never answers
        await nc.flush()  # ... from before the first request, seen from any connection
        lean = LeanRequester(plain(server.url))
        try:
            with pytest.raises(BusUnavailable, match=r"no responders \(503\)"):
                await lean.request("lean.nobody.here", b"x", {}, within=5)
            with pytest.raises(BusUnavailable, match=r"no answer from lean\.sink within 0\.3 s"):
                await lean.request("lean.sink", b"x", {}, within=0.3)
            # After a request that timed out, the same connection goes on answering.
            with pytest.raises(BusUnavailable, match="no responders"):
                await lean.request("lean.nobody.either", b"x", {}, within=5)
        finally:
            lean.close()
            await nc.close()


def free_port() -> int:
    return free_ports(1)[0]


async def test_appends_go_on_after_the_server_restarts_under_an_idle_store(tmp_path: Path) -> None:
    port, ref = free_port(), Ref.vm("survivor")
    async with NatsServer(data_dir=tmp_path, port=port) as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            await provision(nc.jetstream())
            store = EventStore(nc)
            await store.append(ref, [m.VMCreated(spec={})], expected_version=0)
            await server.stop()  # the store's own connection dies with it, idle
            async with NatsServer(data_dir=tmp_path, port=port):
                for _ in range(100):
                    if nc.is_connected:
                        break
                    await asyncio.sleep(0.05)
                r = await store.append(ref, [m.VMStartRequested()], expected_version=1)
                assert r.version == 2
                assert [x.envelope.version for x in await store.read(ref)] == [1, 2]
        finally:
            store.close()
            await nc.close()
