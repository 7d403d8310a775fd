"""The roles' permissions on a real secured nats-server: each denial in the server's own words.

A user's JWT carries its role's subjects (`bus/roles.py`); what it may not publish, the server
refuses with `Permissions Violation for Publish to "<subject>"`, as any NATS client would see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bus.connect import connect, tls_context
from bus.provision import provision
from bus.roles import user_permissions
from bus.server import NatsServer
from bus.store import EventStore
from bus.trust import Trust, ensure
from events import model as m
from events.names import Ref


class User:
    """A connection as one user, with the server's asynchronous errors kept in order."""

    def __init__(self, nc: Client, errors: asyncio.Queue[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def denied(self, subject: str) -> str:
        """Publish to `subject`; the server's refusal (the test fails if none comes)."""
        await self.nc.publish(subject, b"{}")
        await self.nc.flush()
        return await asyncio.wait_for(self.errors.get(), 10)

    async def allowed(self, subject: str) -> None:
        """Publish to `subject` and see no refusal come back before a round trip does."""
        await self.nc.publish(subject, b"{}")
        await self.nc.flush()
        assert self.errors.empty(), self.errors.get_nowait()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[tuple[str, Trust]]:
    trust = ensure(tmp_path / "data")
    async with NatsServer(data_dir=tmp_path / "data", port=-1, trust=trust) as server:
        admin = await connect(server.url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
        try:
            await provision(admin.jetstream())
            await EventStore(admin).append(Ref.vm("a"), [m.VMCreated(spec={})], expected_version=0)
        finally:
            await admin.close()
        yield server.url, trust


async def login(url: str, trust: Trust, name: str, role: str, *namespaces: str) -> User:
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def keep(err: Exception) -> None:
        errors.put_nowait(str(err))

    creds = trust.issue(name, permissions=user_permissions(role, name=name, namespaces=namespaces))
    nc = await nats.connect(url, user_credentials=str(creds), tls=tls_context(trust.ca_file),
                            inbox_prefix=f"_INBOX_{name}", error_cb=keep)  # fmt: skip
    return User(nc, errors)


def violation(subject: str) -> str:
    return f'nats: permissions violation for publish to "{subject}"'


async def test_view_reads_and_commands_nothing(bus: tuple[str, Trust]) -> None:
    viewer = await login(*bus, "vera", "view")
    try:
        history = await EventStore(viewer.nc).read(Ref.vm("a"))
        assert [type(r.envelope.data) for r in history] == [m.VMCreated]
        await viewer.allowed("virt.api.get.vera")
        for subject in (
            "virt.cmd.vm.default.a.StartVM.vera",
            "virt.api.get.alice",
            "virt.vm.default.a.VMScheduled",
            "$JS.API.STREAM.DELETE.VIRT_EVENTS",
        ):
            assert await viewer.denied(subject) == violation(subject.lower())
    finally:
        await viewer.nc.close()


async def test_edit_commands_its_namespaces_under_its_own_name_only(
    bus: tuple[str, Trust],
) -> None:
    editor = await login(*bus, "eddie", "edit", "team-a")
    try:
        ack = await editor.nc.jetstream().publish("virt.cmd.vm.team-a.x.StartVM.eddie", b"{}")
        assert (ack.stream, ack.seq) == ("VIRT_COMMANDS", 1)
        for subject in (
            "virt.cmd.vm.default.x.StartVM.eddie",  # a namespace not granted
            "virt.cmd.vm.team-a.x.StartVM.alice",  # another's name
            "virt.cmd.node._.node-a.DrainNode.eddie",  # nodes are the admin's
            "virt.vm.team-a.x.VMScheduled",  # a decision written straight into the log
            "$JS.API.STREAM.PURGE.VIRT_EVENTS",
            "$JS.API.STREAM.UPDATE.VIRT_EVENTS",
        ):
            assert await editor.denied(subject) == violation(subject.lower())
    finally:
        await editor.nc.close()


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role 'owner': one of admin, edit, view"):
        user_permissions("owner", name="x")
