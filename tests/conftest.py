"""Shared fixtures: a real nats-server per test session, a store on it, and leak guards.

Every test fails if it leaves asyncio tasks or child processes behind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import fuzzing  # noqa: F401  (one hypothesis profile, `ci` or $VIRTBUS_FUZZ, for every test)
import nats
import pytest
from clusterkit import Cluster, shut_down, start_orchestrator
from driverstack import Stack, driver_stack
from nats.aio.client import Client
from procs import children
from waits import api_ready

from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events.names import Ref


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"), port=-1)
    async with server:
        yield server


@pytest.fixture(scope="session")
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_server.url)
    await provision(conn.jetstream())
    yield conn
    await conn.close()


@pytest.fixture
def store(nc: Client) -> EventStore:
    return EventStore(nc, source="/virtbus/tests")


@pytest.fixture
def vm() -> Ref:
    return Ref.vm(f"vm-{uuid.uuid4().hex[:10]}")


@pytest.fixture(autouse=True)
async def no_leaks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    tasks_before = set(asyncio.all_tasks())
    procs_before = children()
    yield
    for _ in range(50):
        leaked = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
        leaked.discard(asyncio.current_task())  # type: ignore[arg-type]
        procs = children() - procs_before
        if not leaked and not procs:
            return
        await asyncio.sleep(0.02)
    for t in leaked:
        t.cancel()
    pytest.fail(
        f"{request.node.name} left running: tasks {[t.get_name() for t in leaked]}, "
        f"child processes {sorted(procs)}"
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "data"
    d.mkdir()
    yield d


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A fresh bus and orchestrator per test: node and VM names never leak between tests."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        stop, task = await start_orchestrator(nc, tmp_path / "orchestrator")
        cl = Cluster(nc, tmp_path)
        try:
            await api_ready(nc)
            yield cl
        finally:
            await shut_down(cl, stop, task)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with driver_stack(tmp_path) as st:
        yield st
