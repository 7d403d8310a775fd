"""`virtbus admin status` on a single server with nothing else running: the server up and leading
every stream, no orchestrator, no dispatcher, no node; said as such."""

from __future__ import annotations

from pathlib import Path

import nats
from clirun import virtbus

from bus.provision import provision
from bus.server import NatsServer


async def test_status_of_a_lone_server_says_what_is_missing(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            await provision(nc.jetstream())
        finally:
            await nc.close()
        state = (await virtbus("admin", "status", "-o", "json", env_url=server.url)).json()
        [one] = state["servers"]
        streams = ["VIRT_EVENTS", "VIRT_COMMANDS", "VIRT_WORK", "KV_virt_heartbeats",
                   "KV_virt_leases"]  # fmt: skip
        assert (one["url"], one["up"], one["leads"]) == (server.url, True, streams)
        assert [(s["name"], s["replicas"], s["leader"], s["followers"])
                for s in state["streams"]] == [
            (name, 1, one["name"], []) for name in streams
        ]  # fmt: skip
        assert state["orchestrator"] == {
            "answering": False,
            "why": f"no virtbus orchestrator is answering on {server.url}; start one with "
            "`virtbus up`",
            "lease": None,  # nobody has held it
        }
        assert (state["dispatcher"], state["nodes"]) == ({"answering": False}, [])
        table = (await virtbus("admin", "status", env_url=server.url)).ok().out
        assert f"VIRT_EVENTS          1          {one['name']}" in table
        assert "orchestrator: not answering (no virtbus orchestrator" in table
