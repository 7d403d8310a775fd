"""The secured bus on a real nats-server: who is let in, who is refused, in the server's words.

Each denial is checked with the error the server itself gives (`Authorization Violation`, the TLS
verification failure, `user authentication revoked`), as a client of any language would see it.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig

from bus.connect import connect, tls_context
from bus.credentials import (
    KeyPair,
    claims_of,
    creds_text,
    read_creds,
    user_jwt,
    write_secret,
)
from bus.leanlogin import LeanUnavailable, Login, login_of
from bus.leanpull import lean_pull
from bus.leanrequest import LeanRequester
from bus.provision import provision
from bus.server import NatsServer
from bus.trust import Trust, ensure, load, revoked_now
from events.errors import BusUnavailable, ValidationError


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Trust]]:
    trust = ensure(tmp_path / "data")
    async with NatsServer(data_dir=tmp_path / "data", port=-1, trust=trust) as server:
        yield server, trust


def test_the_trust_root_is_made_once_and_kept_secret(tmp_path: Path) -> None:
    first = ensure(tmp_path)
    again = ensure(tmp_path)
    assert (again.operator, again.account, again.system) == (
        first.operator, first.account, first.system,
    )  # fmt: skip
    assert again.ca_file.read_bytes() == first.ca_file.read_bytes()
    secret = [*sorted((tmp_path / "keys").iterdir()), tmp_path / "tls" / "ca-key.pem",
              tmp_path / "tls" / "server-key.pem", first.ensure_creds("admin")]  # fmt: skip
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in secret} == {
        p.name: 0o600 for p in secret
    }
    assert first.ensure_creds("admin") == again.ensure_creds("admin")
    assert first.ensure_creds("admin").read_text() == again.ensure_creds("admin").read_text()


def test_a_creds_file_holds_a_user_jwt_signed_by_the_account(tmp_path: Path) -> None:
    trust = ensure(tmp_path)
    jwt, seed = read_creds(trust.ensure_creds("alice"))
    claims = claims_of(jwt)
    assert (claims["name"], claims["iss"], claims["sub"], claims["nats"]["type"]) == (
        "alice", trust.account.public, KeyPair(seed).public, "user",
    )  # fmt: skip


def test_a_damaged_creds_file_is_named(tmp_path: Path) -> None:
    bad = write_secret(tmp_path / "bad.creds", "not a creds file")
    with pytest.raises(ValidationError, match=f"{bad} is not a NATS .creds file") as err:
        read_creds(bad)
    assert err.value.field == "creds"
    with pytest.raises(ValidationError, match=r"cannot read .*missing\.creds: No such file"):
        read_creds(tmp_path / "missing.creds")


async def test_anonymous_clients_are_refused(secured: tuple[NatsServer, Trust]) -> None:
    server, trust = secured
    with pytest.raises(BusUnavailable) as err:
        await connect(server.url, tls_ca=trust.ca_file)
    assert str(err.value) == (
        f"cannot reach NATS at {server.url}: nats: 'Authorization Violation' "
        "(the bus refuses anonymous clients: give --creds FILE or VIRTBUS_CREDS)"
    )


async def test_the_admin_uses_jetstream_over_tls(secured: tuple[NatsServer, Trust]) -> None:
    server, trust = secured
    nc = await connect(server.url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    try:
        created = await provision(nc.jetstream())
        assert created == ["stream VIRT_EVENTS", "stream VIRT_COMMANDS", "stream VIRT_WORK",
                           "kv virt_heartbeats", "kv virt_leases"]  # fmt: skip
    finally:
        await nc.close()


async def test_a_client_without_tls_is_refused(secured: tuple[NatsServer, Trust]) -> None:
    server, trust = secured
    with pytest.raises(BusUnavailable) as err:
        await connect(server.url, creds=trust.ensure_creds("admin"))
    assert str(err.value) == (
        f"cannot reach NATS at {server.url}: "
        "the bus speaks TLS: give its CA with --tls-ca FILE or VIRTBUS_TLS_CA"
    )


async def test_a_server_not_signed_by_the_given_ca_is_refused(
    secured: tuple[NatsServer, Trust], tmp_path: Path
) -> None:
    server, trust = secured
    other = ensure(tmp_path / "other")
    with pytest.raises(BusUnavailable, match=r"CERTIFICATE_VERIFY_FAILED.*check --tls-ca"):
        await connect(server.url, creds=trust.ensure_creds("admin"), tls_ca=other.ca_file)


async def test_credentials_from_another_stack_are_refused(
    secured: tuple[NatsServer, Trust], tmp_path: Path
) -> None:
    server, trust = secured
    stranger = ensure(tmp_path / "other").ensure_creds("admin")
    with pytest.raises(BusUnavailable) as err:
        await connect(server.url, creds=stranger, tls_ca=trust.ca_file)
    assert str(err.value).endswith(
        "nats: 'Authorization Violation' "
        "(the server refused these credentials: revoked, expired or not signed by it)"
    )


async def test_an_expired_credential_is_refused(
    secured: tuple[NatsServer, Trust], tmp_path: Path
) -> None:
    server, trust = secured
    user = KeyPair.new("user")
    jwt = user_jwt(trust.account, user.public, name="late", expires=int(time.time()) - 1)
    late = write_secret(tmp_path / "late.creds", creds_text(jwt, user.seed))
    with pytest.raises(BusUnavailable, match="'Authorization Violation'"):
        await connect(server.url, creds=late, tls_ca=trust.ca_file)


async def test_a_revoked_user_is_cut_off_without_a_restart(
    secured: tuple[NatsServer, Trust],
) -> None:
    server, trust = secured
    alice = trust.issue("alice")
    nc = await connect(server.url, creds=alice, tls_ca=trust.ca_file)
    closed = asyncio.Event()
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    async def on_closed() -> None:
        closed.set()

    nc._error_cb, nc._closed_cb = on_error, on_closed  # nats-py keeps no public setter
    system = await nats.connect(server.url, user_credentials=str(trust.system_creds()),
                                tls=tls_context(trust.ca_file))  # fmt: skip
    try:
        revoked = {KeyPair(read_creds(alice)[1]).public: revoked_now()}
        claim = trust.account_claim(revocations=revoked).encode()
        reply = await system.request("$SYS.REQ.CLAIMS.UPDATE", claim, timeout=5)
        assert b'"code":200' in reply.data, reply.data
        await asyncio.wait_for(closed.wait(), 30)
        # the server writes "-ERR 'User Authentication Revoked'" then closes; over TLS the client
        # sees that, or only the close (EOF), or nothing before it gives up, by timing: whatever
        # it saw is one of those, and the refusal below is the server's word
        assert set(errors) <= {"nats: user authentication revoked", "nats: unexpected EOF"}
        with pytest.raises(BusUnavailable, match="'Authorization Violation'"):
            await connect(server.url, creds=alice, tls_ca=trust.ca_file)
    finally:
        await system.close()
        await nc.close()


async def test_the_lean_paths_log_in_over_tls_and_refuse_to_go_without(
    secured: tuple[NatsServer, Trust],
) -> None:
    server, trust = secured
    admin = trust.ensure_creds("admin")
    nc = await connect(server.url, creds=admin, tls_ca=trust.ca_file)
    try:
        await provision(nc.jetstream())
        login = login_of(nc)
        assert login is not None
        assert (login.creds, login.tls is not None) == (admin, True)
        lean = LeanRequester(login)
        try:  # an append, as the store's single appends go
            ack = json.loads(await lean.request("virt.vm.default.a.VMCreated", b"{}", {},
                                                within=5))  # fmt: skip
        finally:
            lean.close()
        assert ack == {"stream": "VIRT_EVENTS", "seq": 1}
        got: list[tuple[bytes, str, int]] = []  # a replay, as the store's replays go
        info = await nc.jetstream().add_consumer("VIRT_EVENTS", ConsumerConfig())
        pulled = await lean_pull(
            login, next_subject=f"$JS.API.CONSUMER.MSG.NEXT.VIRT_EVENTS.{info.name}",
            request=b'{"batch": 10, "expires": 2000000000}', batch=10,
            handler=lambda *m: got.append(m), idle_timeout=5,
        )  # fmt: skip
        assert (pulled, got) == (1, [(b"{}", "virt.vm.default.a.VMCreated", 1)])
    finally:
        await nc.close()
    # The server's words, before anything is sent: no credentials, then no TLS.
    anonymous = Login(login.host, login.port, {}, tls=login.tls)
    with pytest.raises(LeanUnavailable, match="Authorization Violation"):
        await LeanRequester(anonymous).request("virt.vm.default.b.VMCreated", b"{}", {}, within=5)
    plain = Login(login.host, login.port, {}, creds=admin)
    with pytest.raises(LeanUnavailable, match="the server's TLS and nats-py's differ"):
        await LeanRequester(plain).request("virt.vm.default.b.VMCreated", b"{}", {}, within=5)


def test_a_trust_root_elsewhere_is_loaded_never_made(tmp_path: Path) -> None:
    """`python -m orchestrator --trust-dir D` (the keys from a Secret) loads what `virtbus up`
    made; a directory without them is named, and nothing is made in it."""
    made = ensure(tmp_path / "up")
    loaded = load(tmp_path / "up")
    assert (loaded.operator, loaded.account, loaded.system) == (made.operator, made.account,
                                                               made.system)  # fmt: skip
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError) as err:
        load(tmp_path / "empty")
    assert err.value.message == (
        f"{tmp_path / 'empty'} is not a virtbus trust root: no keys/operator.nk, "
        "keys/account.nk, keys/system.nk, tls/ca.pem"
    )
    assert list((tmp_path / "empty").iterdir()) == []


async def test_a_restarted_server_refuses_the_revoked_from_its_start(tmp_path: Path) -> None:
    """Revocations kept beside the keys go into the account claim the server starts with: no
    window after a restart in which a revoked user gets back in."""
    trust = ensure(tmp_path / "data")
    alice = trust.issue("alice")
    trust.save_revocations({KeyPair(read_creds(alice)[1]).public: revoked_now()})
    async with NatsServer(data_dir=tmp_path / "data", port=-1, trust=trust) as server:
        with pytest.raises(BusUnavailable, match="'Authorization Violation'"):
            await connect(server.url, creds=alice, tls_ca=trust.ca_file)
        admin = await connect(server.url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
        await admin.close()  # (the others still get in)
