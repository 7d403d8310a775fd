"""Who asked, as the secured bus says: the actor recorded for a command is the identity the
server authenticated, never the name the client wrote into it.

Each test runs a real secured nats-server (operator JWT, TLS) and the orchestrator logged in as
itself; clients log in with `.creds` files the stack's trust issued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from driverstack import seed
from nats.aio.client import Client
from waits import api_ready

from bus.client import Rejected, send
from bus.connect import connect, identity
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from bus.trust import Trust, ensure
from events import commands as c
from events import model as m
from events.names import Ref
from orchestrator.app import run_orchestrator


async def login(url: str, trust: Trust, name: str) -> Client:
    creds = trust.ensure_creds(name)
    return await connect(url, name=name, creds=creds, tls_ca=trust.ca_file)


@dataclass
class Secured:
    url: str
    trust: Trust
    admin: Client

    async def login(self, name: str) -> Client:
        return await login(self.url, self.trust, name)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    trust = ensure(tmp_path / "data")
    async with NatsServer(data_dir=tmp_path / "data", port=-1, trust=trust) as server:
        st = Secured(server.url, trust, admin=await login(server.url, trust, "admin"))
        await provision(st.admin.jetstream())
        orchestrator = await st.login("orchestrator")
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_orchestrator(orchestrator, data_dir=tmp_path / "orch", stop=stop),
            name="orchestrator",
        )
        try:
            await api_ready(st.admin, subject="virt.api.get.admin")
            yield st
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
            await orchestrator.close()
            await st.admin.close()


async def actors(nc: Client, ref: Ref) -> list[tuple[str, str]]:
    return [(type(r.envelope.data).__name__, r.envelope.actor)
            for r in await EventStore(nc).read(ref)]  # fmt: skip


async def test_a_command_through_the_api_is_recorded_as_who_sent_it(secured: Secured) -> None:
    alice = await secured.login("alice")
    try:
        assert identity(alice) == "alice"
        forged = msgspec.structs.replace(seed("a", runStrategy="Halted"), actor="bob")
        await send(alice, forged)
        stop = c.StopVM(name="a", actor="root")  # not running: refused, and still alice's
        with pytest.raises(Rejected, match=r"^VM is not running$"):
            await send(alice, stop)
    finally:
        await alice.close()
    assert await actors(secured.admin, Ref.vm("a")) == [
        ("VMCreated", "alice"), ("CommandRejected", "alice"),
    ]  # fmt: skip


async def test_a_command_published_to_the_stream_is_recorded_as_the_subjects_actor(
    secured: Secured,
) -> None:
    """The other door: a plain JetStream publish. Its subject ends in the publisher's name (the
    server lets alice publish only there once roles are on); the body's `actor` is ignored."""
    alice = await secured.login("alice")
    ref = Ref.vm("b")
    watch = await secured.admin.subscribe(ref.wildcard)
    try:
        body = msgspec.structs.replace(seed("b", runStrategy="Halted"), actor="mallory", id="b-1")
        await alice.jetstream().publish(ref.command_subject("ApplyVM", actor="alice"),
                                        msgspec.json.encode(body))  # fmt: skip
        await watch.next_msg(timeout=30)
    finally:
        await watch.unsubscribe()
        await alice.close()
    assert await actors(secured.admin, ref) == [("VMCreated", "alice")]
    assert isinstance((await EventStore(secured.admin).read(ref))[0].envelope.data, m.VMCreated)
