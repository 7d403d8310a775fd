"""The orchestrator killed at each crash point of a start, then started again: every command has
exactly one effect and nothing is left half done.

The orchestrator runs as its own process (`python -m orchestrator`) with VIRTBUS_CRASH_AT set
(`orchestrator/crashpoints.py`: it leaves as SIGKILL would, at that point and nowhere else); the
command goes straight onto the command stream (the API dies with the process); the process is
started again without the crash point, and the log must then hold one decision of each kind and
the node one start.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import nats
import pytest
from clusterkit import Cluster, seed_apply
from driverstack import Stack, seed
from waits import api_ready, settle

from bench.rig import stop_orchestrator
from bus.client import send
from bus.provision import provision
from bus.server import NatsServer, die_with_parent
from events import commands as c
from events.envelope import encode
from orchestrator.crashpoints import EXIT_CODE


async def orchestrator(
    url: str, data_dir: Path, *, crash_at: str = ""
) -> asyncio.subprocess.Process:
    env = {**os.environ, "VIRTBUS_CRASH_AT": crash_at}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "--server", url, "--data-dir", str(data_dir),
        "--node-grace", "30", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )  # fmt: skip


@pytest.mark.parametrize("point", ["intake:ApplyVM", "decided:VMScheduled", "sent:Start"])
async def test_a_start_killed_at_a_crash_point_has_one_effect(tmp_path: Path, point: str) -> None:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        cl = Cluster(nc, tmp_path)
        procs = [await orchestrator(server.url, tmp_path / "o", crash_at=point)]
        try:
            node = await cl.node("node-a")
            cmd = seed_apply("crashed", runStrategy="Always")
            await nc.jetstream().publish(cmd.target.command_subject("ApplyVM"), encode(cmd),
                                         headers={"Nats-Msg-Id": "apply-crashed"})  # fmt: skip
            assert await asyncio.wait_for(procs[0].wait(), 60) == EXIT_CODE  # it got there
            procs.append(await orchestrator(server.url, tmp_path / "o"))
            s = await cl.until("crashed", lambda s: s.status == "Running", within=60)
            assert s.node == "node-a"
            kinds = Counter(type(r.envelope.data).__name__ for r in await cl.history("crashed"))
            assert (kinds["VMCreated"], kinds["VMScheduled"], kinds["DomainStarted"],
                    kinds["CommandRejected"]) == (1, 1, 1, 0)  # fmt: skip
            assert [type(x).__name__ for x in node.work] == ["Start"]  # the node asked once
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            for n in cl.nodes:
                await n.close()
            await nc.close()


@pytest.mark.parametrize("point", ["intake:MigrateVM", "decided:MigrationScheduled"])
async def test_a_migration_killed_at_a_crash_point_has_one_effect(
    tmp_path: Path, point: str
) -> None:
    """On libvirt's test driver (a cold move there): the migration ends once, Succeeded, with the
    VM Running on the other node, whichever point the orchestrator died at."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        st = Stack(nc, server.url, tmp_path)
        procs = [await orchestrator(server.url, tmp_path / "o")]
        try:
            for name in ("node-a", "node-b"):
                st.provide_seed_volumes(name)
                await st.node(name)
            await api_ready(nc)
            await send(nc, seed("moved", runStrategy="Always"), wait_s=60)
            before = (await st.until("moved", "Running")).node
            await stop_orchestrator(procs[0])
            procs.append(await orchestrator(server.url, tmp_path / "o", crash_at=point))
            cmd = c.MigrateVM(name="moved", migration="once", id="migrate-moved")
            await nc.jetstream().publish(cmd.target.command_subject("MigrateVM"), encode(cmd),
                                         headers={"Nats-Msg-Id": cmd.id})  # fmt: skip
            assert await asyncio.wait_for(procs[1].wait(), 60) == EXIT_CODE
            procs.append(await orchestrator(server.url, tmp_path / "o"))
            for _ in range(1200):
                kinds = Counter(await st.kinds("moved"))
                if kinds["MigrationSucceeded"] or kinds["MigrationFailed"]:
                    break
                await asyncio.sleep(0.05)
            s = await st.until("moved", "Running")
            once = ("MigrationRequested", "MigrationScheduled", "MigrationSucceeded")
            assert [kinds[k] for k in (*once, "MigrationFailed")] == [1, 1, 1, 0]
            assert (s.node, s.migration.phase if s.migration else "") == (
                {"node-a": "node-b", "node-b": "node-a"}[before or ""], "Succeeded")  # fmt: skip
        finally:
            for proc in procs:
                await stop_orchestrator(proc)
            await settle("the nodes", st.stop_nodes())
            await nc.close()
