"""The embedded bus: durability across a server kill, provisioning, fsync, a busy port."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import model as m
from events.errors import BusUnavailable, ConfigConflict
from events.names import EVENT_SUBJECTS, EVENTS_STREAM, Ref


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
            # The streams survived, and the buckets too (on disk): nothing is made anew.
            assert await provision(nc.jetstream()) == []
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
            # A stream older than the audit, pool and KubeVirt aggregates just gains their subjects.
            newer = ["virt.audit.>", "virt.kubevirt.>", "virt.vmpool.>"]
            older = [s for s in EVENT_SUBJECTS if s not in newer]
            await js.update_stream(
                StreamConfig(name=EVENTS_STREAM, subjects=older, allow_atomic=True,
                             allow_direct=True, deny_delete=True, deny_purge=True,
                             duplicate_window=600)
            )  # fmt: skip
            assert await provision(js) == [f"stream {EVENTS_STREAM} subjects {', '.join(newer)}"]
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
