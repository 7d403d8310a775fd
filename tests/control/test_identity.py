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
import nats
import pytest
from driverstack import seed
from nats.aio.client import Client
from waits import api_ready

from bus.client import Rejected, query, send
from bus.connect import connect, identity, tls_context
from bus.credentials import KeyPair, creds_text, write_secret
from bus.provision import provision
from bus.roles import record_identities
from bus.server import NatsServer
from bus.store import EventStore
from bus.trust import Trust, ensure
from events import commands as c
from events import model as m
from events.errors import BusUnavailable, VirtbusError
from events.names import Ref
from events.protocol import Query
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
        trust.ensure_creds("orchestrator")
        await record_identities(
            EventStore(st.admin), trust, roles={"admin": "admin", "orchestrator": "admin"}
        )  # as `up` does
        orchestrator = await st.login("orchestrator")
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_orchestrator(orchestrator, data_dir=tmp_path / "orch", stop=stop, trust=trust),
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


async def add(secured: Secured, name: str, role: str, *namespaces: str) -> Client:
    """`virtbus auth add-user` as the admin does it; a connection as the new user."""
    pair = KeyPair.new("user")
    await send(secured.admin, c.AddUser(name=name, role=role, namespaces=list(namespaces),
                                        public_key=pair.public))  # fmt: skip
    [added] = [r.envelope.data for r in await EventStore(secured.admin).read(Ref.of("user", name))]
    assert isinstance(added, m.UserAdded)
    creds = write_secret(secured.trust.root / f"{name}.creds", creds_text(added.jwt, pair.seed))
    return await connect(secured.url, creds=creds, tls_ca=secured.trust.ca_file)


async def test_a_command_through_the_api_is_recorded_as_who_sent_it(secured: Secured) -> None:
    alice = await add(secured, "alice", "edit")
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
    server lets alice publish only there); the body's `actor` is ignored."""
    alice = await add(secured, "alice", "edit")
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


async def test_each_role_commands_what_it_may_and_the_rest_is_a_recorded_forbidden(
    secured: Secured,
) -> None:
    eddie = await add(secured, "eddie", "edit", "team-a")
    vera = await add(secured, "vera", "view")
    try:
        await send(
            eddie, msgspec.structs.replace(seed("x", runStrategy="Halted"), namespace="team-a")
        )
        cases = [
            (eddie, seed("x", runStrategy="Halted"), Ref.vm("x"),
             'forbidden: user "eddie" (edit in team-a) cannot ApplyVM virtualmachines in the '
             'namespace "default"'),
            (vera, c.StartVM(name="x", namespace="team-a"), Ref.vm("x", "team-a"),
             'forbidden: user "vera" (view) cannot StartVM virtualmachines in the namespace '
             '"team-a"'),
            (eddie, c.DrainNode(name="node-a"), Ref.node("node-a"),
             'forbidden: user "eddie" (edit in team-a) cannot DrainNode nodes'),
            (eddie, c.RevokeUser(name="vera"), Ref.of("user", "vera"),
             'forbidden: user "eddie" (edit in team-a) cannot RevokeUser users'),
        ]  # fmt: skip
        for who, cmd, ref, reason in cases:
            with pytest.raises(Rejected) as refused:
                await send(who, cmd)
            assert str(refused.value) == reason
            last = (await EventStore(secured.admin).read(ref))[-1].envelope
            assert isinstance(last.data, m.CommandRejected)
            assert (last.data.reason, last.actor) == (reason, identity(who))
    finally:
        await eddie.close()
        await vera.close()


async def test_a_revoked_user_is_cut_off_at_once_and_refused_after(secured: Secured) -> None:
    await (await add(secured, "alice", "edit")).close()
    creds, cut = secured.trust.root / "alice.creds", asyncio.Event()

    async def dropped() -> None:
        cut.set()

    alice = await nats.connect(
        secured.url, user_credentials=str(creds), tls=tls_context(secured.trust.ca_file),
        inbox_prefix="_INBOX_alice", disconnected_cb=dropped, max_reconnect_attempts=0,
    )  # fmt: skip
    try:
        await send(secured.admin, c.RevokeUser(name="alice"))
        # The server closes her open connection (saying why, which over TLS may not reach her
        # before the close does); the refusal below is its word.
        await asyncio.wait_for(cut.wait(), 30)
    finally:
        await alice.close()
    with pytest.raises(BusUnavailable, match="Authorization Violation"):
        await connect(secured.url, creds=creds, tls_ca=secured.trust.ca_file)
    # The orchestrator told the server, and keeps it beside the keys for the server's next start.
    revoked = (await EventStore(secured.admin).read(Ref.of("user", "alice")))[-1].envelope.data
    assert isinstance(revoked, m.UserRevoked)
    expected = dict.fromkeys(revoked.public_keys, revoked.revoked_at)
    assert secured.trust.saved_revocations() == expected


async def test_virtbus_api_answers_each_reader_for_its_namespaces_only(secured: Secured) -> None:
    """What the read model answers is judged by virtbus-api, which knows the caller: an `edit`
    user of team-a listing every namespace sees team-a's VMs only, and naming another namespace
    is forbidden; a `view` user of every namespace sees all."""
    for ns in ("team-a", "default"):
        vm = msgspec.structs.replace(seed("x", runStrategy="Halted"), namespace=ns)
        await send(secured.admin, vm)
    eddie = await add(secured, "eddie", "edit", "team-a")
    vera = await add(secured, "vera", "view")
    try:
        seen = {}
        for who, nc in (("eddie", eddie), ("vera", vera)):
            for _ in range(100):  # the read model follows the log: until both VMs are in it
                vms = (await query(vera, Query(what="vms"))).vms
                if len(vms) == 2:
                    break
                await asyncio.sleep(0.05)
            seen[who] = sorted((v.namespace, v.name) for v in (await query(nc, Query())).vms)
        assert seen == {"eddie": [("team-a", "x")],
                        "vera": [("default", "x"), ("team-a", "x")]}  # fmt: skip
        for q, verb in ((Query(namespace="default"), "list"), (Query(name="x"), "get")):
            with pytest.raises(VirtbusError) as refused:
                await query(eddie, q)
            assert str(refused.value) == (
                f'forbidden: user "eddie" (edit in team-a) cannot {verb} virtualmachines in the '
                'namespace "default"'
            )
        assert [v.name for v in (await query(eddie, Query(namespace="team-a", name="x"))).vms] == [
            "x"
        ]
    finally:
        await eddie.close()
        await vera.close()
