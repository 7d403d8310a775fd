"""The orchestrator killed at each crash point of a start, then started again: every command has
exactly one effect and nothing is left half done.

The orchestrator runs as its own process (`python -m orchestrator`) with VIRTBUS_CRASH_AT set
(`bus/crashpoints.py`: it leaves as SIGKILL would, at that point and nowhere else); the
command goes straight onto the command stream (the API dies with the process); the process is
started again without the crash point, and the log must then hold one decision of each kind and
the node one start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from asyncio.subprocess import Process
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from clusterkit import Cluster, seed_apply
from driverstack import Stack, seed
from waits import api_ready, settle

from bench.rig import stop_orchestrator
from bus.client import send
from bus.crashpoints import EXIT_CODE
from bus.provision import provision
from bus.server import NatsServer, die_with_parent
from events import commands as c
from events.envelope import encode
from events.names import Ref
from events.state import VMState


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


@contextlib.asynccontextmanager
async def orchestrated(tmp_path: Path) -> AsyncIterator[tuple[Stack, list[Process]]]:
    """A bus and an orchestrator process (the first of `procs`: the test adds the ones it
    starts), nodes on the test driver joining with `Stack.node`; all stopped on the way out."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        st = Stack(nc, server.url, tmp_path)
        procs = [await orchestrator(server.url, tmp_path / "o")]
        try:
            yield st, procs
        finally:
            for proc in procs:
                await stop_orchestrator(proc)
            await settle("the nodes", st.stop_nodes())
            await nc.close()


async def killed_mid_way(
    tmp_path: Path, *, point: str, cmd: c.Command, ends: tuple[str, str]
) -> tuple[VMState, Counter[str]]:
    """The seed VM "moved" Running on node-a or node-b (test driver), then `cmd` sent to an
    orchestrator that dies at `point`, then one without it until the VM's log holds one of `ends`
    (success, failure) and it runs again: its state then, and its events counted by kind."""
    async with orchestrated(tmp_path) as (st, procs):
        nc, url = st.nc, st.url
        for name in ("node-a", "node-b"):
            st.provide_seed_volumes(name)
            await st.node(name)
        await api_ready(nc)
        await send(nc, seed("moved", runStrategy="Always"), wait_s=60)
        await st.until("moved", "Running")
        await stop_orchestrator(procs[0])
        procs.append(await orchestrator(url, tmp_path / "o", crash_at=point))
        subject = cmd.target.command_subject(type(cmd).__name__)
        await nc.jetstream().publish(subject, encode(cmd), headers={"Nats-Msg-Id": cmd.id})
        assert await asyncio.wait_for(procs[1].wait(), 60) == EXIT_CODE  # it got there
        procs.append(await orchestrator(url, tmp_path / "o"))
        for _ in range(1200):
            kinds = Counter(await st.kinds("moved"))
            if any(kinds[k] for k in ends):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"after a crash at {point}: neither of {ends} in {kinds}")
        s = await st.until("moved", "Running", within=30)  # (its last reports in)
        return s, Counter(await st.kinds("moved"))


# Every point of a migration the orchestrator acts at: its intake, each phase's decision or work
# (Scheduled; the target prepared; the source told to go), and each node report it reacts to.
MIGRATION_POINTS = [
    "intake:MigrateVM", "decided:MigrationScheduled", "sent:PrepareTarget",
    "seen:MigrationTargetReady", "sent:MigrateSource", "seen:MigrationStarted",
    "seen:MigrationSucceeded",
]  # fmt: skip


@pytest.mark.parametrize("point", MIGRATION_POINTS)
async def test_a_migration_killed_at_a_crash_point_has_one_effect(
    tmp_path: Path, point: str
) -> None:
    """On libvirt's test driver (a cold move there): the migration ends once, Succeeded, with the
    VM Running on the other node, whichever point the orchestrator died at."""
    cmd = c.MigrateVM(name="moved", migration="once", id="migrate-moved")
    ends = ("MigrationSucceeded", "MigrationFailed")
    s, kinds = await killed_mid_way(tmp_path, point=point, cmd=cmd, ends=ends)
    once = ("MigrationRequested", "MigrationScheduled", "MigrationTargetReady",
            "MigrationStarted", "MigrationSucceeded")  # fmt: skip
    assert [kinds[k] for k in (*once, "MigrationFailed")] == [1, 1, 1, 1, 1, 0]
    # two starts: the first, and the target's boot of the cold move (none twice)
    assert (kinds["DomainStarted"], kinds["CommandRejected"]) == (2, 0)
    assert s.migration is not None
    assert (s.migration.phase, s.node) == ("Succeeded", s.migration.target)
    assert s.migration.target != s.migration.source


@pytest.mark.parametrize("point", ["intake:SnapshotVM", "sent:TakeSnapshot",
                                   "seen:SnapshotSucceeded"])  # fmt: skip
async def test_a_snapshot_killed_mid_way_has_one_effect(tmp_path: Path, point: str) -> None:
    """The orchestrator dies after the snapshot was asked for, while the node takes it, and when
    the node has said it is done: the snapshot is ReadyToUse once, the VM runs on."""
    cmd = c.SnapshotVM(name="moved", snapshot="snap1", id="snapshot-moved")
    s, kinds = await killed_mid_way(tmp_path, point=point, cmd=cmd,
                                     ends=("SnapshotSucceeded", "SnapshotFailed"))  # fmt: skip
    once = ("SnapshotRequested", "SnapshotSucceeded")
    assert [kinds[k] for k in (*once, "SnapshotFailed", "CommandRejected")] == [1, 1, 0, 0]
    assert (s.snapshots["snap1"].phase, s.snapshotting, s.status) == ("Succeeded", "", "Running")


async def worker(
    url: str, root: Path, node: str, *, crash_at: str = ""
) -> asyncio.subprocess.Process:
    """A node worker on libvirt's test driver as a process of its own (it can die mid-way)."""
    env = {**os.environ, "VIRTBUS_CRASH_AT": crash_at}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers", "--node", node, "--data-dir", str(root / "nodes"),
        "--server", url, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )  # fmt: skip


@pytest.mark.parametrize("point", ["reporting:VolumeMoved", "reported:VolumeMoved"])
async def test_a_volume_move_whose_new_node_dies_mid_way_moves_it_once(
    tmp_path: Path, point: str
) -> None:
    """The new node's worker dies with the data in place and the log not told, or told and the
    work not acknowledged: started again, the volume ends on the new node once, whole, and
    nothing of it is left on the old one (nor any scratch copy on the new)."""
    async with orchestrated(tmp_path) as (st, procs):
        nc, url = st.nc, st.url
        await st.node("node-a")
        procs.append(await worker(url, tmp_path, "node-b", crash_at=point))
        await st.until_node("node-b")
        await api_ready(nc)
        await send(nc, c.CreateVolume(name="moved", size="4Mi", node="node-a"), wait_s=60)
        ref = Ref("volume", "default", "moved")
        old = st.node_dir("node-a") / "volumes" / "default" / "moved"
        for _ in range(600):
            if (old / "disk.img").is_file():
                break
            await asyncio.sleep(0.05)
        data = b"moved-once" * 1000
        with (old / "disk.img").open("r+b") as f:
            f.write(data)
        await send(nc, c.MoveVolume(name="moved", node="node-b"), wait_s=60)
        assert await asyncio.wait_for(procs[-1].wait(), 60) == EXIT_CODE  # it got there
        procs.append(await worker(url, tmp_path, "node-b"))
        new = st.node_dir("node-b") / "volumes" / "default" / "moved"
        for _ in range(1200):  # the move recorded and the old copy removed
            kinds = Counter(type(r.envelope.data).__name__ for r in await st.store.read(ref))
            if (kinds["VolumeMoved"] or kinds["VolumeMoveFailed"]) and not old.exists():
                break
            await asyncio.sleep(0.05)
        assert (kinds["VolumeMoveRequested"], kinds["VolumeMoved"],
                kinds["VolumeMoveFailed"]) == (1, 1, 0)  # fmt: skip
        assert (old.exists(), sorted(p.name for p in new.iterdir())) == (False, ["disk.img"])
        assert (new / "disk.img").read_bytes()[: len(data)] == data
