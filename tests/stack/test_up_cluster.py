"""`virtbus up --cluster 3`: three nats-servers as one JetStream cluster under the stack's trust,
the log in three copies, every part given every server, and a member's death ridden out."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import nats
import pytest
from clirun import cli_env, virtbus
from procs import children
from upstack import as_admin, gone, next_line, virtbus_up, worker_pid

from bus.connect import tls_context
from bus.store import EventStore
from events.names import EVENTS_STREAM, Ref

SERVER_LINE = re.compile(r"nats-server (n\d): pid (\d+), (nats://127\.0\.0\.1:\d+), data in (.+)")


def _argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


async def test_up_runs_a_three_server_cluster_and_rides_out_a_members_death(
    tmp_path: Path,
) -> None:
    """As `make run` would with `--cluster 3`: a line per process with its pid, R3 streams, the
    node and the CLI given all three servers (the CLI by the file the stack leaves in
    ./.virtbus); a member SIGKILLed is said, started again on its port, and the stack carries
    on; Ctrl-C stops everything."""
    async with virtbus_up("--cluster", "3", "--port", "-1", "--data-dir", ".virtbus",
                          "--nodes", "1", "--orchestrators", "2",
                          cwd=tmp_path) as (proc, url):  # fmt: skip
        assert proc.stderr is not None
        data = tmp_path / ".virtbus"
        servers = {}
        for _ in range(3):
            line = (await next_line(proc.stderr, b"nats-server n")).decode().strip()
            name, pid, client, where = SERVER_LINE.fullmatch(line).groups()  # type: ignore[union-attr]
            servers[name] = (int(pid), client, Path(where))
        assert sorted(servers) == ["n1", "n2", "n3"]
        assert url == ",".join(servers[n][1] for n in ("n1", "n2", "n3"))
        assert {p for p, _, _ in servers.values()} <= children(of=proc.pid)
        assert [w for _, _, w in servers.values()] == [data / n for n in ("n1", "n2", "n3")]
        assert (await next_line(proc.stderr, b"durability:")) == (
            b"durability: fsync before every ack (jetstream sync_interval: always)\n"
        )
        orchestrator = await next_line(proc.stderr, b"orchestrator o1:")
        assert orchestrator.startswith(f"orchestrator o1: pid {proc.pid} ".encode())
        standby = (await next_line(proc.stderr, b"orchestrator o2:")).decode()
        o2 = int(
            re.fullmatch(
                r"orchestrator o2: pid (\d+) \(a standby until it holds the "
                r"lease\)\n",
                standby,
            ).group(1)
        )  # type: ignore[union-attr]
        assert o2 in children(of=proc.pid)
        node = await next_line(proc.stderr, b"node node-a:")
        worker = worker_pid(proc.pid, o2)
        assert node == f"node node-a: pid {worker}, libvirt test driver\n".encode()
        argv = _argv(worker)
        assert argv[argv.index(b"--server") + 1] == url.encode()  # the node has all three
        assert (data / "bus.url").read_text() == url + "\n"

        nc = await as_admin(url, data)
        try:
            info = await nc.jetstream().stream_info(EVENTS_STREAM)
            assert info.cluster is not None
            assert (info.config.num_replicas, len(info.cluster.replicas or [])) == (3, 2)
            store = EventStore(nc)
            for _ in range(400):  # until the node (given all three servers) has registered
                if await store.read(Ref.node("node-a")):
                    break
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
        env = cli_env(None)  # no --server, no $VIRTBUS_NATS_URL: found in ./.virtbus/bus.url
        listed = (await virtbus("get", "nodes", env=env, cwd=tmp_path)).ok()
        assert "node-a" in listed.out
        await _status_shows_every_part(env, cwd=tmp_path, url=url)
        await _a_revocation_reaches_every_server(env, cwd=tmp_path, url=url)

        victim, client, _ = servers["n2"]
        os.kill(victim, signal.SIGKILL)
        said = await next_line(proc.stderr, b"nats-server n2: exited")
        assert said == (b"nats-server n2: exited with code -9; the cluster carries on with 2 of "
                        b"3; starting it again in 1s (restart 1)\n")  # fmt: skip
        again = (await next_line(proc.stderr, b"nats-server n2: running again")).decode()
        assert re.fullmatch(rf"nats-server n2: running again \(pid \d+, {client}\)\n", again)
        # the stack did not stop: it answers again (the orchestrator may have dropped its lease
        # while the lease bucket elected a leader, and been started again: give it time)
        for _ in range(60):
            answer = await virtbus("get", "nodes", env=env, cwd=tmp_path)
            if answer.code == 0:
                break
            await asyncio.sleep(0.5)
        assert "node-a" in answer.ok().out
        kids = children(of=proc.pid)
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
        assert all([await gone(p) for p in kids])
        assert not (data / "bus.url").exists()


async def test_up_refuses_more_copies_than_its_servers_hold(tmp_path: Path) -> None:
    """Refused before anything starts, saying why: one copy per server at most."""
    five = await virtbus("up", "--cluster", "3", "--replicas", "5", "--data-dir", str(tmp_path))
    assert (five.code, five.err) == (1, (
        "error: replicas: 5 copies of each stream asked, but --cluster 3 runs 3 servers, one "
        "copy each at most\n"
    ))  # fmt: skip
    two = await virtbus("up", "--replicas", "2", "--data-dir", str(tmp_path))
    assert (two.code, two.err) == (1, (
        "error: replicas: 2 copies of each stream asked, but a single server holds one copy: "
        "give --cluster N\n"
    ))  # fmt: skip
    both = await virtbus("up", "--cluster", "3", "--server", "nats://127.0.0.1:1")
    assert (both.code, both.err) == (2, (
        "error: --cluster runs servers of its own: with --server, give --replicas instead\n"
    ))  # fmt: skip
    assert os.listdir(tmp_path) == []  # nothing made, nothing started


async def _status_shows_every_part(env: dict[str, str], *, cwd: Path, url: str) -> None:
    """`virtbus admin status`: three servers up, each stream led by one of them and followed by
    the two others, the orchestrator and the dispatcher answering, the node beating."""
    state = (await virtbus("admin", "status", "-o", "json", env=env, cwd=cwd)).json()
    assert [(s["name"], s["url"], s["up"]) for s in state["servers"]] == [
        (f"n{i}", u, True) for i, u in enumerate(url.split(","), 1)
    ]
    streams = ["VIRT_EVENTS", "VIRT_COMMANDS", "VIRT_WORK", "KV_virt_heartbeats", "KV_virt_leases"]
    assert [s["name"] for s in state["streams"]] == streams
    for s in state["streams"]:
        peers = sorted([s["leader"], *(f["name"] for f in s["followers"])])
        assert (s["replicas"], peers) == (3, ["n1", "n2", "n3"]), s
    leads = sorted(n for s in state["servers"] for n in s["leads"])
    assert leads == sorted(streams)
    assert (state["orchestrator"]["answering"], state["dispatcher"]) == (True, {"answering": True})
    assert state["orchestrator"]["lease"]["holder"] == "o1"  # o2 stands by
    [node] = state["nodes"]
    assert (node["name"], node["heartbeat_age_s"] is not None) == ("node-a", True)
    table = (await virtbus("admin", "status", env=env, cwd=cwd)).ok().out.splitlines()
    assert table[0].split() == ["SERVER", "URL", "STATE", "VERSION", "LEADS"]
    assert "webhook dispatcher: answering" in table


async def _a_revocation_reaches_every_server(env: dict[str, str], *, cwd: Path, url: str) -> None:
    """A user added logs in at each server; revoked (the orchestrator pushes the account's claim
    to the server it is connected to), each server refuses it: the servers share claims."""
    (await virtbus("auth", "add-user", "bob", "--role", "view", "-o", "bob.creds", env=env,
                   cwd=cwd)).ok()  # fmt: skip
    tls = tls_context(cwd / ".virtbus" / "tls" / "ca.pem")

    async def as_bob(server: str) -> None:
        nc = await nats.connect(server, user_credentials=str(cwd / "bob.creds"), tls=tls,
                                allow_reconnect=False, max_reconnect_attempts=0)  # fmt: skip
        await nc.close()

    for one in url.split(","):
        await as_bob(one)
    (await virtbus("auth", "revoke", "bob", env=env, cwd=cwd)).ok()
    for one in url.split(","):
        for _ in range(100):  # (each server hears of it in its own time)
            try:
                await as_bob(one)
            except nats.errors.Error as err:
                assert "Authorization Violation" in str(err)
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"{one} still lets the revoked user in")
