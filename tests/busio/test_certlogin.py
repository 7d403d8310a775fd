"""Logging in by client certificate alone on a bus run with mutual TLS: the orchestrator's auth
callout service tells the real nats-server who a certificate names, as the log records the user.

Each refusal is checked in the server's own words: the client is told `Authorization Violation`,
and the server's log says the reason the callout gave it.
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

from bus import pki
from bus.client import Rejected, login, send
from bus.connect import Access, connect, identity, tls_context
from bus.credentials import KeyPair, write_secret
from bus.leanlogin import login_of, open_lean
from bus.provision import provision
from bus.roles import record_identities
from bus.server import NatsServer
from bus.store import EventStore
from bus.trust import Trust, ensure
from events import commands as c
from events import model as m
from events.errors import BusUnavailable
from events.names import Ref
from orchestrator.app import run_orchestrator


@dataclass
class Stack:
    server: NatsServer
    trust: Trust
    admin: Client

    def certificate(self, name: str, *, ca: pki.Issued | None = None) -> Access:
        """A client certificate naming `name` (signed by the stack's CA unless `ca`), with the
        stack's CA and sentinel and no credentials: a login by certificate alone."""
        tls = self.trust.root / "tls"
        ca = ca or pki.Issued((tls / "ca.pem").read_bytes(), (tls / "ca-key.pem").read_bytes())
        leaf = pki.issue(ca, f"{name}@virtbus", client=True)
        cert, key = self.trust.root / f"{name}.pem", self.trust.root / f"{name}-key.pem"
        cert.write_bytes(leaf.cert_pem)
        write_secret(key, leaf.key_pem)
        return Access(None, self.trust.ca_file, tls_cert=cert, tls_key=key,
                      sentinel=self.trust.sentinel_creds())  # fmt: skip

    async def add(self, name: str, role: str, *namespaces: str) -> None:
        """`virtbus auth add-user` without the .creds (its seed is thrown away)."""
        await send(self.admin, c.AddUser(name=name, role=role, namespaces=list(namespaces),
                                         public_key=KeyPair.new("user").public))  # fmt: skip

    def refusals(self) -> set[str]:
        """The reasons the server logged for the callout's refusals (a client tries a few times)."""
        said = "Auth callout service returned an error: "
        lines = self.server.log_file.read_text().splitlines()
        return {line.split(said, 1)[1] for line in lines if said in line}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(tmp_path, mutual_tls=True) as st:
        yield st


@contextlib.asynccontextmanager
async def running(tmp_path: Path, *, mutual_tls: bool) -> AsyncIterator[Stack]:
    """A secured bus (`mutual_tls`: asking for client certificates) and the orchestrator."""
    trust = ensure(tmp_path / "data")
    async with NatsServer(data_dir=tmp_path / "data", port=-1, trust=trust,
                          mutual_tls=mutual_tls) as server:  # fmt: skip

        def own(name: str) -> Access:
            cert, key = trust.client_cert(name) if mutual_tls else (None, None)
            return Access(trust.ensure_creds(name), trust.ca_file, tls_cert=cert, tls_key=key)

        own("orchestrator")  # its credentials, before its user is recorded
        admin = await connect(server.url, access=own("admin"))
        await provision(admin.jetstream())
        await record_identities(
            EventStore(admin), trust, roles={"admin": "admin", "orchestrator": "admin"}
        )  # as `up` does
        orchestrator = await connect(server.url, access=own("orchestrator"))
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_orchestrator(orchestrator, data_dir=tmp_path / "orch", stop=stop, trust=trust),
            name="orchestrator",
        )
        try:
            await api_ready(admin, subject="virt.api.get.admin")
            yield Stack(server, trust, admin)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
            await orchestrator.close()
            await admin.close()


async def test_a_certificate_logs_in_as_the_user_it_names(stack: Stack) -> None:
    """alice (edit in team-a) has no credentials of her own: her certificate makes her alice, her
    commands are recorded as hers, and her role holds (default is not hers)."""
    await stack.add("alice", "edit", "team-a")
    alice = await login(stack.server.url, name="alice", access=stack.certificate("alice"))
    try:
        assert identity(alice) == "alice"
        await send(alice, msgspec.structs.replace(seed("x", runStrategy="Halted"),
                                                  namespace="team-a", actor="mallory"))  # fmt: skip
        with pytest.raises(Rejected) as refused:
            await send(alice, seed("y", runStrategy="Halted"))
        # she reads the log as her role does: her namespace's trees, under her consumer names
        [created] = await EventStore(alice).read(Ref.vm("x", "team-a"))
        assert isinstance(created.envelope.data, m.VMCreated)
        # the lean paths log in on connections of their own: by her certificate too
        lean_login = login_of(alice)
        assert lean_login is not None
        _, lean = await open_lean(lean_login, limit=2**16)
        lean.close()
    finally:
        await alice.close()
    reason = ('forbidden: user "alice" (edit in team-a) cannot ApplyVM virtualmachines in the '
              'namespace "default"')  # fmt: skip
    assert str(refused.value) == reason
    recorded = [(type(r.envelope.data).__name__, r.envelope.actor)
                for ref in (Ref.vm("x", "team-a"), Ref.vm("y"))
                for r in await EventStore(stack.admin).read(ref)]  # fmt: skip
    assert recorded == [("VMCreated", "alice"), ("CommandRejected", "alice")]


async def test_a_revoked_users_certificate_is_cut_off_and_refused(stack: Stack) -> None:
    await stack.add("bob", "view")
    cut = asyncio.Event()

    async def dropped() -> None:
        cut.set()

    bob = stack.certificate("bob")
    assert bob.tls_cert is not None and bob.sentinel is not None
    opened = await nats.connect(
        stack.server.url, user_credentials=str(bob.sentinel), disconnected_cb=dropped,
        tls=tls_context(stack.trust.ca_file, cert=bob.tls_cert, key=bob.tls_key),
        max_reconnect_attempts=0,
    )  # fmt: skip
    try:
        await send(stack.admin, c.RevokeUser(name="bob"))
        await asyncio.wait_for(cut.wait(), 30)  # the login's key was revoked with bob's own
    finally:
        await opened.close()
    with pytest.raises(BusUnavailable, match="Authorization Violation") as refused:
        await connect(stack.server.url, access=bob)
    assert str(refused.value).endswith(
        "(the bus refused this certificate's login: its user is unknown or revoked, the "
        "orchestrator's log says which)"
    )
    assert stack.refusals() == {'the client certificate\'s user "bob" is revoked'}


async def test_a_certificate_of_no_user_is_refused(stack: Stack) -> None:
    with pytest.raises(BusUnavailable, match="Authorization Violation"):
        await connect(stack.server.url, access=stack.certificate("carol"))
    assert stack.refusals() == {'the client certificate\'s user "carol" is not a user of this bus'}


async def test_a_certificate_another_ca_signed_is_refused_by_tls(stack: Stack) -> None:
    """The handshake fails, so no login is tried: the server says why in its log (the client
    sees the alert, or the connection the server broke first: a broken pipe or a reset, as the
    timing falls)."""
    await stack.add("dave", "view")
    with pytest.raises(BusUnavailable) as refused:
        await connect(stack.server.url, access=stack.certificate("dave", ca=pki.new_ca()))
    assert str(refused.value) in {
        f"cannot reach NATS at {stack.server.url}: {why}"
        for why in ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)",
                    "[Errno 32] Broken pipe", "[Errno 104] Connection reset by peer")
    }  # fmt: skip
    said = "TLS handshake error: tls: failed to verify certificate: x509: certificate signed by "
    handshakes = [
        line.split(said, 1)[1].split(" (", 1)[0]
        for line in stack.server.log_file.read_text().splitlines()
        if said in line
    ]
    assert set(handshakes) == {"unknown authority"}
    assert stack.refusals() == set()


async def test_without_mutual_tls_the_sentinel_is_no_one(tmp_path: Path) -> None:
    """A bus not run with --mtls asks for no certificate: the sentinel's credentials, the only
    ones a certificate login presents, log in as no one."""
    async with running(tmp_path, mutual_tls=False) as st:
        with pytest.raises(BusUnavailable, match="Authorization Violation"):
            await connect(st.server.url, creds=st.trust.sentinel_creds(), tls_ca=st.trust.ca_file)
        assert st.refusals() == {"no client certificate the bus's CA verified (a bus run with "
                                 "--mtls asks)"}  # fmt: skip
