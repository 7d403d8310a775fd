"""The embedded bus: durability across a server kill, provisioning, `virtbus up` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import model as m
from events.errors import BusUnavailable, ConfigConflict
from events.model import TOKEN
from events.names import EVENT_SUBJECTS, EVENTS_STREAM, Ref

CLI = [sys.executable, "-m", "virtbus"]


async def test_killed_server_keeps_every_acked_event(data_dir: Path) -> None:
    refs = [Ref.vm(f"d{i}") for i in range(10)]
    async with NatsServer(data_dir=data_dir, port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        store = EventStore(nc)
        for v in range(20):
            for ref in refs:
                ev = m.VMCreated(spec={}) if v == 0 else m.VMFailed(reason=f"{ref.name}-{v}")
                await store.append(ref, [ev], expected_version=v)
        before = {ref: await store.read(ref) for ref in refs}
        server.kill()  # SIGKILL: no chance to flush anything that was not already written
        await nc.close()
    async with NatsServer(data_dir=data_dir, port=-1) as again:
        nc = await nats.connect(again.url)
        try:
            # The streams survived; only the in-memory heartbeat bucket is made anew.
            assert await provision(nc.jetstream()) == ["kv virt_heartbeats"]
            store = EventStore(nc)
            for ref in refs:
                assert await store.read(ref) == before[ref]
        finally:
            await nc.close()


async def test_provisioning_is_idempotent_and_refuses_a_conflicting_stream(data_dir: Path) -> None:
    async with NatsServer(data_dir=data_dir, port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            first = await provision(js)
            assert f"stream {EVENTS_STREAM}" in first
            assert await provision(js) == []
            # An operator's stream under our name with other settings is reported, not changed.
            await js.update_stream(
                StreamConfig(name=EVENTS_STREAM, subjects=["virt.vm.>"], allow_atomic=True,
                             allow_direct=True, deny_delete=True, deny_purge=True,
                             duplicate_window=600)
            )  # fmt: skip
            with pytest.raises(ConfigConflict, match=r"VIRT_EVENTS .*subjects: existing"):
                await provision(js)
            assert (await js.stream_info(EVENTS_STREAM)).config.subjects == ["virt.vm.>"]
            # A stream from before the audit aggregate existed only gains its subjects.
            older = [s for s in EVENT_SUBJECTS if s != "virt.audit.>"]
            await js.update_stream(
                StreamConfig(name=EVENTS_STREAM, subjects=older, allow_atomic=True,
                             allow_direct=True, deny_delete=True, deny_purge=True,
                             duplicate_window=600)
            )  # fmt: skip
            assert await provision(js) == [f"stream {EVENTS_STREAM} subjects virt.audit.>"]
            subjects = (await js.stream_info(EVENTS_STREAM)).config.subjects
            assert sorted(subjects or []) == sorted(EVENT_SUBJECTS)
        finally:
            await nc.close()


async def test_fsync_always_is_a_setting(data_dir: Path) -> None:
    async with NatsServer(data_dir=data_dir, port=-1, sync_always=True) as server:
        conf = json.loads((data_dir / "nats-server.conf").read_text())
        assert conf["jetstream"]["sync_interval"] == "always"
        assert conf["host"] == "127.0.0.1"
        nc = await nats.connect(server.url)
        try:
            await provision(nc.jetstream())
            r = await EventStore(nc).append(Ref.vm("a"), [m.VMCreated(spec={})], expected_version=0)
            assert r.version == 1
        finally:
            await nc.close()


async def test_a_busy_port_is_a_clear_error(data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BusUnavailable, match=f"did not start on 127.0.0.1:{port}"):
            await NatsServer(data_dir=data_dir, port=port).start()


@contextlib.asynccontextmanager
async def virtbus_up(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "up", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"bus: nats://127.0.0.1:"), line
        yield proc, line.decode().split()[1]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == pid:
                    out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


async def _gone(pid: int, within: float = 10) -> bool:
    for _ in range(int(within / 0.05)):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_virtbus_up_provisions_and_stops_on_ctrl_c(data_dir: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir)) as (proc, url):
        nc = await nats.connect(url)
        names = [s.config.name for s in await nc.jetstream().streams_info()]
        await nc.close()
        assert {"VIRT_EVENTS", "VIRT_COMMANDS", "VIRT_WORK"} <= set(names)
        server_pid = _children_of(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert b"durability: fsync every 2 minutes" in err
        assert b"audit: no key ($VIRTBUS_AUDIT_KEY or $VIRTBUS_AUDIT_KEY_FILE)" in err
        assert server_pid and all([await _gone(p) for p in server_pid])


async def test_nats_server_dies_with_a_killed_parent(data_dir: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir)) as (proc, _):
        server_pids = _children_of(proc.pid)
        assert server_pids
        proc.kill()
        await proc.wait()
        # Reparented to init and then SIGTERMed by PR_SET_PDEATHSIG: it must not outlive us.
        assert all([await _gone(p) for p in server_pids])


async def test_virtbus_up_can_use_an_existing_server(nats_server: NatsServer) -> None:
    async with virtbus_up("--server", nats_server.url, "--nodes", "0") as (proc, url):
        assert url == nats_server.url
        assert _children_of(proc.pid) == []  # it started no server of its own
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0


async def test_virtbus_up_runs_the_orchestrator_and_two_test_nodes(data_dir: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir)) as (proc, url):
        nc = await nats.connect(url)
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
        children = _children_of(proc.pid)
        assert len(children) == 3  # nats-server and two workers
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
        assert all([await _gone(p) for p in children])


@pytest.mark.kvm
async def test_virtbus_up_with_qemu_nodes(kvm_host: None, data_dir: Path) -> None:
    # Only this stack's daemons and guests: those that see mounts from its data dir (tests of
    # other sessions may run nodes of their own on this machine meanwhile).
    def ours() -> set[int]:
        return _named("libvirtd", seeing=data_dir) | _named("qemu-system-x86_64", seeing=data_dir)

    args = ("--port", "-1", "--data-dir", str(data_dir), "--hypervisor", "qemu", "--nodes", "1")
    async with virtbus_up(*args) as (proc, url):
        nc = await nats.connect(url)
        try:
            store = EventStore(nc)
            for _ in range(600):  # a first node on a machine probes QEMU for ~8 s
                if history := await store.read(Ref.node("node-a")):
                    break
                await asyncio.sleep(0.05)
            registered = history[0].envelope.data
            assert isinstance(registered, m.NodeRegistered)
            assert (registered.hypervisor, registered.kvm) == ("qemu", True)
            assert registered.libvirt_uri.startswith("qemu+unix:///system?socket=")
            assert _named("libvirtd", seeing=data_dir)  # the node's own daemon runs
        finally:
            await nc.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
    for _ in range(100):  # the node's libvirtd is gone with it
        if not ours():
            break
        await asyncio.sleep(0.1)
    assert ours() == set()


def _named(exe: str, *, seeing: Path) -> set[int]:
    """PIDs whose executable is `exe` (zombies excluded) with a mount from under `seeing`."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rpartition(")")[2][1]
            if name != exe[:15] or state == "Z":
                continue
            with contextlib.suppress(OSError):
                if str(seeing) in Path(f"/proc/{entry}/mountinfo").read_text():
                    out.add(int(entry))
    return out


def _worker_pid(up_pid: int) -> int:
    """The node worker among `virtbus up`'s children (started as `python -m workers`)."""
    for pid in _children_of(up_pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"workers" in argv:
            return pid
    raise AssertionError("no node worker among the children")


async def _line(stream: asyncio.StreamReader, prefix: bytes) -> bytes:
    """The next line of `stream` that starts with `prefix` (earlier lines are passed over)."""
    while line := await asyncio.wait_for(stream.readline(), 30):
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the stream ended before a line starting {prefix!r}")


async def test_virtbus_up_starts_a_dead_node_worker_again(data_dir: Path) -> None:
    """A node worker killed under the stack is started again after a back-off, said on stderr;
    it registers again and the stack still stops cleanly."""
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir), "--nodes", "1") as (
        proc, url,
    ):  # fmt: skip
        assert proc.stderr is not None
        nc = await nats.connect(url)
        try:
            sub = await nc.subscribe(Ref.node("node-a").event_subject(TOKEN[m.NodeRegistered]))
            victim = _worker_pid(proc.pid)
            os.kill(victim, signal.SIGKILL)
            said = await _line(proc.stderr, b"node node-a: exited")
            assert (
                said == b"node node-a: exited with code -9; starting it again in 1s (restart 1)\n"
            )
            again = await _line(proc.stderr, b"node node-a: running again")
            pid = _worker_pid(proc.pid)
            assert (again, pid != victim) == (f"node node-a: running again (pid {pid})\n".encode(),
                                              True)  # fmt: skip
            await sub.next_msg(timeout=30)  # the new worker joined the cluster again
        finally:
            await nc.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0


async def test_virtbus_up_stops_when_its_nats_server_dies(data_dir: Path) -> None:
    """The nats-server is the one child not restarted (clients hold its port): its death stops
    the stack, with exit code 1 and the reason."""
    async with virtbus_up("--port", "-1", "--data-dir", str(data_dir), "--nodes", "1") as (
        proc, _,
    ):  # fmt: skip
        server = next(p for p in _children_of(proc.pid) if p != _worker_pid(proc.pid))
        os.kill(server, signal.SIGKILL)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1
        assert err.decode().splitlines()[-1] == (
            "error: nats-server exited with code -9: the stack stops (it rests on it)"
        )
