"""Two orchestrators on one bus: the lease's holder acts, the other answers reads and takes over
when the holder stops; the old holder, resumed, is fenced off and exits instead of acting.

The holder is a real `python -m orchestrator` process, frozen with SIGSTOP for longer than the
lease's ttl (the "paused, then resumed" case) and later resumed; the standby runs in the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import msgspec
import nats
from clusterkit import Cluster, seed_apply
from nats.js.errors import KeyNotFoundError
from waits import api_ready, settle

from bus.client import send
from bus.provision import provision
from bus.server import NatsServer, die_with_parent
from events import commands as c
from orchestrator.app import run_orchestrator
from orchestrator.lease import Holding
from orchestrator.lease import bucket as lease_bucket


async def holder(nc: nats.aio.client.Client) -> str:
    try:
        entry = await (await lease_bucket(nc)).get("controller")
    except KeyNotFoundError:
        return ""
    return msgspec.json.decode(entry.value or b"", type=Holding).holder


async def test_a_standby_takes_over_and_the_resumed_holder_is_fenced_off(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "--server", server.url, "--data-dir",
            str(tmp_path / "o1"), "--node-grace", "30", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        standby_nc = await nats.connect(server.url)
        stop = asyncio.Event()
        standby: asyncio.Task[None] | None = None
        cl = Cluster(nc, tmp_path)
        try:
            await api_ready(nc)
            for _ in range(600):  # the process comes first: it leads
                if f"-{first.pid}-" in await holder(nc):
                    break
                await asyncio.sleep(0.05)
            assert f"-{first.pid}-" in await holder(nc)
            standby = asyncio.create_task(
                run_orchestrator(standby_nc, data_dir=tmp_path / "o2", stop=stop, name="o2"),
                name="orchestrator-o2",
            )
            await cl.node("node-a")
            await cl.send(seed_apply("before", runStrategy="Always"))
            await cl.until("before", lambda s: s.status == "Running")

            os.kill(first.pid, signal.SIGSTOP)  # frozen mid-lease: no renewal, no release
            # Asked of virtbus-api, a queue group the frozen process is still in until the server
            # gives up on it: the client asks again after each silence, under one command id.
            await send(nc, seed_apply("after", runStrategy="Always"), wait_s=60)
            s = await cl.until("after", lambda s: s.status == "Running")
            assert (s.node, await holder(nc)) == ("node-a", "o2")  # decided by the standby

            os.kill(first.pid, signal.SIGCONT)  # resumed: its renewal is refused, it stops
            _, err = await asyncio.wait_for(first.communicate(), 30)
            assert first.returncode == 1
            assert "another orchestrator holds the controller lease now" in err.decode()
            await send(nc, c.StopVM(name="before"))  # gone from the group: o2 answers at once
            await cl.until("before", lambda s: s.status == "Stopped")
        finally:
            if first.returncode is None:
                first.kill()
                await first.communicate()
            for node in cl.nodes:
                await settle(f"node {node.name}", node.close())
            stop.set()
            if standby is not None:
                await settle("the standby", standby)
            await standby_nc.close()
            await nc.close()
