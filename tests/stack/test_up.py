"""`virtbus up` as a process: it provisions, runs the orchestrator and nodes, restarts a dead one,
and stops (with everything it started) on Ctrl-C, SIGTERM or its nats-server's death."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from clirun import cli_env, virtbus
from procs import children
from upstack import as_admin, gone, next_line, virtbus_up, worker_pid

from bus.connect import connect
from bus.server import NatsServer
from bus.store import EventStore
from events import model as m
from events.errors import BusUnavailable
from events.model import TOKEN
from events.names import Ref


async def test_virtbus_up_provisions_and_stops_on_ctrl_c(data_dir: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir)) as (proc, url):
        nc = await as_admin(url, data_dir)
        names = [s.config.name for s in await nc.jetstream().streams_info()]
        await nc.close()
        assert {"VIRT_EVENTS", "VIRT_COMMANDS", "VIRT_WORK"} <= set(names)
        server_pid = children(of=proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert b"durability: fsync before every ack (jetstream sync_interval: always)" in err
        assert b"audit: no key ($VIRTBUS_AUDIT_KEY or $VIRTBUS_AUDIT_KEY_FILE)" in err
        assert server_pid and all([await gone(p) for p in server_pid])


async def test_nats_server_dies_with_a_killed_parent(data_dir: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir)) as (proc, _):
        server_pids = children(of=proc.pid)
        assert server_pids
        proc.kill()
        await proc.wait()
        # Reparented to init and then SIGTERMed by PR_SET_PDEATHSIG: it must not outlive us.
        assert all([await gone(p) for p in server_pids])


async def test_virtbus_up_can_use_an_existing_server(nats_server: NatsServer) -> None:
    async with virtbus_up("--server", nats_server.url, "--nodes", "0") as (proc, url):
        assert url == nats_server.url
        assert children(of=proc.pid) == set()  # it started no server of its own
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0


async def test_virtbus_up_runs_the_orchestrator_and_two_test_nodes(data_dir: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir)) as (proc, url):
        nc = await as_admin(url, data_dir)
        try:
            store = EventStore(nc)
            for _ in range(200):
                names = [n for n in ("node-a", "node-b") if await store.read(Ref.node(n))]
                if len(names) == 2:
                    break
                await asyncio.sleep(0.05)
            assert names == ["node-a", "node-b"]
            registered = (await store.read(Ref.node("node-a")))[0].envelope.data
            assert isinstance(registered, m.NodeRegistered)
            assert (registered.hypervisor, registered.libvirt_uri[:8]) == ("test", "test:///")
            reply = await nc.request("virt.api.get", b'{"what": "nodes"}', timeout=10)
            assert b"node-a" in reply.data  # the orchestrator answers too
        finally:
            await nc.close()
        kids = children(of=proc.pid)
        assert len(kids) == 3  # nats-server and two workers
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
        assert all([await gone(p) for p in kids])


async def test_virtbus_up_starts_a_dead_node_worker_again(data_dir: Path) -> None:
    """A node worker killed under the stack is started again after a back-off, said on stderr;
    it registers again and the stack still stops cleanly."""
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir), "--nodes", "1") as (
        proc, url,
    ):  # fmt: skip
        assert proc.stderr is not None
        nc = await as_admin(url, data_dir)
        try:
            # (a node writes under its own name on the secured bus: the last token)
            registered = Ref.node("node-a").event_subject(TOKEN[m.NodeRegistered], writer="node-a")
            sub = await nc.subscribe(registered)
            victim = worker_pid(proc.pid)
            os.kill(victim, signal.SIGKILL)
            said = await next_line(proc.stderr, b"node node-a: exited")
            assert (
                said == b"node node-a: exited with code -9; starting it again in 1s (restart 1)\n"
            )
            again = await next_line(proc.stderr, b"node node-a: running again")
            pid = worker_pid(proc.pid)
            assert (again, pid != victim) == (f"node node-a: running again (pid {pid})\n".encode(),
                                              True)  # fmt: skip
            await sub.next_msg(timeout=30)  # the new worker joined the cluster again
        finally:
            await nc.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0


async def test_virtbus_up_starts_its_dead_nats_server_again_and_the_stack_carries_on(
    data_dir: Path,
) -> None:
    """The single nats-server killed under the stack comes back on its port and its store, said
    on stderr; the parts wait for it and carry on: what was applied before is there, and a VM
    applied after it runs."""
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir), "--nodes", "1") as (
        proc, url,
    ):  # fmt: skip
        assert proc.stderr is not None
        env = cli_env(url) | {
            "VIRTBUS_CREDS": str(data_dir / "creds" / "admin.creds"),
            "VIRTBUS_TLS_CA": str(data_dir / "tls" / "ca.pem"),
        }
        before = await virtbus("apply", "-f", "-", env=env, cwd=data_dir.parent,
                               stdin=HALTED_VM.format(name="before"))  # fmt: skip
        assert before.ok().out == "virtualmachine.kubevirt.io/before created\n"
        server = next(p for p in children(of=proc.pid) if p != worker_pid(proc.pid))
        os.kill(server, signal.SIGKILL)
        said = await next_line(proc.stderr, b"nats-server: exited")
        assert said == (
            b"nats-server: exited with code -9; nothing is written until it is back, "
            b"and every part waits for it; starting it again in 1s (restart 1)\n"
        )
        again = await next_line(proc.stderr, b"nats-server: running again")
        restarted = next(p for p in children(of=proc.pid) if p != worker_pid(proc.pid))
        assert (again, restarted != server) == (
            f"nats-server: running again (pid {restarted}, {url})\n".encode(), True)  # fmt: skip
        for _ in range(120):  # the orchestrator's connection finds the server again
            after = await virtbus("apply", "-f", "-", env=env, cwd=data_dir.parent,
                                  stdin=HALTED_VM.format(name="after"))  # fmt: skip
            if after.code == 0:
                break
            await asyncio.sleep(0.5)
        assert after.ok().out == "virtualmachine.kubevirt.io/after created\n"
        assert (await virtbus("start", "after", env=env, cwd=data_dir.parent)).ok().out == (
            "VM after was scheduled to start\n")  # fmt: skip
        ready = await virtbus("wait", "vm", "after", "--for", "condition=Ready", "--timeout",
                              "60s", env=env, cwd=data_dir.parent)  # fmt: skip
        assert ready.ok().out == "virtualmachine.kubevirt.io/after condition met\n"
        listed = await virtbus("get", "vms", "-o", "name", env=env, cwd=data_dir.parent)
        assert listed.ok().out == (
            "virtualmachine.kubevirt.io/after\nvirtualmachine.kubevirt.io/before\n")  # fmt: skip
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0


HALTED_VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Halted
  template:
    spec:
      domain: {{devices: {{}}, memory: {{guest: 64Mi}}}}
"""


async def test_virtbus_up_secures_its_bus_and_the_cli_finds_the_keys_where_it_ran(
    tmp_path: Path,
) -> None:
    """As `make run` does (`--data-dir .virtbus`, relative): the bus refuses anonymous clients
    and speaks TLS; the credentials and the CA are where scripts expect them; the CLI run from
    the same directory uses them by itself, and from elsewhere says what it needs."""
    here, elsewhere = tmp_path / "repo", tmp_path / "other"
    here.mkdir()
    elsewhere.mkdir()
    async with virtbus_up("--port", "-1", "--data-dir", ".virtbus", "--nodes", "1",
                          cwd=here) as (proc, url):  # fmt: skip
        data = here / ".virtbus"
        assert sorted(p.name for p in (data / "creds").iterdir()) == [
            "admin.creds", "dispatcher.creds", "node-a.creds", "orchestrator.creds",
            "sentinel.creds",  # logins by certificate present it (it is allowed nothing)
        ]  # fmt: skip
        assert (data / "tls" / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        with pytest.raises(BusUnavailable, match="the bus speaks TLS"):
            await connect(url)
        with pytest.raises(BusUnavailable, match="Authorization Violation"):
            await connect(url, tls_ca=data / "tls" / "ca.pem")
        env = cli_env(url)
        found = await virtbus("get", "vms", env=env, cwd=here)
        assert (found.code, found.out, found.err) == (
            0, "No resources found in default namespace.\n", "",
        )  # fmt: skip
        lost = await virtbus("get", "vms", env=env, cwd=elsewhere)
        assert (lost.code, lost.err) == (1, (
            f"error: cannot reach NATS at {url}: the bus speaks TLS: give its CA with --tls-ca "
            "FILE or VIRTBUS_TLS_CA\n"
        ))  # fmt: skip
        told = await virtbus("get", "vms", "--creds",
                             str(data / "creds" / "admin.creds"), "--tls-ca",
                             str(data / "tls" / "ca.pem"), env=env, cwd=elsewhere)  # fmt: skip
        assert told == found
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
