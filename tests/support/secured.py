"""A secured nats-server with the log provisioned, and connections as one user of a role whose
asynchronous errors (the server's refusals) are kept in order: for the permission tests."""

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
