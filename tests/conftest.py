"""Shared fixtures: a real nats-server per test session, a store on it, and leak guards.

Every test fails if it leaves asyncio tasks or child processes behind.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import fuzzing  # noqa: F401  (one hypothesis profile, `ci` or $VIRTBUS_FUZZ, for every test)
import nats
import pytest
from clusterkit import Cluster, start_orchestrator
from nats.aio.client import Client

from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events.names import Ref


def children() -> set[int]:
    """PIDs whose parent is this process."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if fields and fields[0] != "Z" and int(fields[1]) == me:
                out.add(int(entry))
    return out


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


async def settle(what: str, aw: Awaitable[object], *, within: float = 30) -> None:
    """Await a teardown step; if it hangs, fail naming every task still waiting, and where."""
    step = asyncio.ensure_future(aw)
    _, pending = await asyncio.wait({step}, timeout=within)
    if not pending:
        step.result()
        return
    stacks = []  # taken before anything is cancelled, so the culprit is still in the list
    for t in asyncio.all_tasks():
        frames = t.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        stacks.append(f"  {t.get_name()}: {where}")
    step.cancel()
    pytest.fail(f"{what} did not finish within {within}s; tasks:\n" + "\n".join(stacks))


def qemu_pids(domain: str) -> list[int]:
    """Live QEMU processes running `domain`, found by its `-name guest=<domain>,...` argument."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile; a zombie has an empty cmdline and never matches
        if (
            argv
            and b"qemu-system" in argv[0]
            and any(a.split(b",")[0] == f"guest={domain}".encode() for a in argv)
        ):
            found.append(int(entry))
    return sorted(found)


async def api_ready(nc: Client, *, within: float = 30) -> None:
    """Wait until `virtbus-api` answers (a loaded machine can take a while to start it)."""
    for _ in range(int(within / 0.1)):
        try:
            await nc.request("virt.api.get", b'{"what": "nodes"}', timeout=1)
            return
        except Exception:  # no responders yet, or a timeout
            await asyncio.sleep(0.1)
    pytest.fail(f"virtbus-api did not answer within {within}s")


@pytest.fixture
def kvm_host() -> None:
    """Skip, saying why, only where this machine truly cannot run a QEMU/KVM node."""
    from workers.qemunodes import kvm_usable, qemu_available

    for ok, why in (qemu_available(), kvm_usable()):
        if not ok:
            print(f"\nskipping: {why}")
            pytest.skip(why)


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
            for node in cl.nodes:
                await settle(f"node {node.name}", node.close())
            stop.set()
            await settle("the orchestrator", task)
            await nc.close()
