"""The control plane on a real nats-server, for tests: a bus, an orchestrator, simulated nodes.

Shared by the tests of the intake, the controller and bad input alike (`cluster` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from paths import SEED

from bench.simnode import SimNode
from bus.client import send
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events.envelope import Recorded
from events.names import Ref
from events.state import VMState
from orchestrator.app import run_orchestrator

GRACE_S = 1.5  # node heartbeat grace: short, so node loss is tested in seconds


class Cluster:
    def __init__(self, nc: Client, data_dir: Path) -> None:
        self.nc = nc
        self.data_dir = data_dir
        self.store = EventStore(nc, source="/tests")
        self.nodes: list[SimNode] = []

    async def node(self, name: str, **kwargs: Any) -> SimNode:
        node = await SimNode(self.nc, name, **kwargs).start()
        self.nodes.append(node)
        return node

    async def send(self, cmd: c.Command) -> c.Outcome:
        return await send(self.nc, cmd)

    async def state(self, name: str, namespace: str = "default") -> VMState:
        return (await VMRepository(self.store).get(Ref.vm(name, namespace)))[0]

    async def history(self, name: str) -> list[Recorded]:
        return await self.store.read(Ref.vm(name))

    async def until(
        self, name: str, ok: Callable[[VMState], bool], *, within: float = 15
    ) -> VMState:
        """Poll the VM's fold until `ok`; fail with the last state seen."""
        s = await self.state(name)
        for _ in range(int(within / 0.05)):
            if ok(s):
                return s
            await asyncio.sleep(0.05)
            s = await self.state(name)
        pytest.fail(f"{name} never reached the expected state; last: {s.status}/{s.phase}")


async def start_orchestrator(
    nc: Client, data_dir: Path
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_orchestrator(nc, data_dir=data_dir, stop=stop, node_grace_s=GRACE_S),
        name=f"orchestrator-{data_dir.name}",
    )
    return stop, task


async def shut_down(cl: Cluster, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """The cluster's simulated nodes, then its orchestrator, then its connection, each waited
    for (a hang fails naming what hangs)."""
    from waits import settle

    for node in cl.nodes:
        await settle(f"node {node.name}", node.close())
    stop.set()
    await settle("the orchestrator", task)
    await cl.nc.close()


def seed_apply(name: str = "centos7", **spec_changes: Any) -> c.ApplyVM:
    from events.manifest import parse_documents, to_commands

    doc = parse_documents(SEED.read_text())[0]
    doc["metadata"]["name"] = name
    if "runStrategy" in spec_changes:
        del doc["spec"]["running"]  # KubeVirt refuses both at once
    doc["spec"].update(spec_changes)
    cmds, _ = to_commands(doc)
    assert isinstance(cmds[0], c.ApplyVM)
    return cmds[0]
