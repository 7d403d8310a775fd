"""Three real nats-servers on loopback, one JetStream cluster (`bus/cluster.py`): routes over
mutual TLS with the stack's CA, clients held to the operator's identities, a replicated stream
that outlives its leader.

The first increment of issue "cluster": the servers themselves. `virtbus up --cluster` and the
clients' own riding out of a leader's loss come next.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError

from bus.cluster import NatsCluster, free_ports, until_ready
from bus.connect import connect, tls_context
from bus.provision import provision
from bus.server import NatsServer, Route
from bus.trust import Trust, ensure
from events.errors import ValidationError


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[NatsCluster, Trust]]:
    trust = ensure(tmp_path / "trust")
    async with NatsCluster(data_dir=tmp_path / "servers", size=3, trust=trust) as c:
        yield c, trust


async def admin(urls: list[str], trust: Trust) -> Client:
    """The admin, given every server (as every client of a cluster is), over TLS."""
    return await nats.connect(servers=urls, user_credentials=str(trust.ensure_creds("admin")),
                              tls=tls_context(trust.ca_file), connect_timeout=5,
                              reconnect_time_wait=0.2)  # fmt: skip


async def test_three_servers_hold_a_replicated_stream_through_its_leaders_death(
    cluster: tuple[NatsCluster, Trust],
) -> None:
    c, trust = cluster
    nc = await admin(c.urls, trust)
    try:
        await until_ready(nc)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=3))
        for i in range(10):
            await js.publish(f"t.{i}", b"%d" % i)
        info = await js.stream_info("T")
        assert info.cluster is not None and info.cluster.leader is not None
        followers = sorted(r.name for r in info.cluster.replicas or [])
        assert sorted([info.cluster.leader, *followers]) == ["n1", "n2", "n3"]
        # The stream's leader dies (SIGKILL): the other two elect a new one and go on, with
        # everything acked before it.
        leader = info.cluster.leader
        c.servers[int(leader[1:]) - 1].kill()
        for _ in range(100):  # an election takes a few seconds; a publish meanwhile gets a 503
            try:
                await js.publish("t.after", b"after", timeout=1)
                break
            except (NoStreamResponseError, TimeoutError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        info = await js.stream_info("T")
        assert info.cluster is not None
        assert (info.state.messages, info.cluster.leader != leader) == (11, True)
    finally:
        await nc.close()


async def test_an_anonymous_client_is_refused_by_every_server(
    cluster: tuple[NatsCluster, Trust],
) -> None:
    c, trust = cluster
    for url in c.urls:
        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(url, tls=tls_context(trust.ca_file), max_reconnect_attempts=0,
                               allow_reconnect=False, connect_timeout=2)  # fmt: skip


async def test_a_server_without_the_stacks_route_certificate_cannot_join(
    cluster: tuple[NatsCluster, Trust], tmp_path: Path
) -> None:
    """Routes are mutual TLS with the stack's CA: a server of another trust dialing the routes is
    refused in the handshake (the member says so in its log), and every member still has exactly
    its two peers (routez, asked as the system account)."""
    c, trust = cluster
    [port, route_port] = free_ports(2)
    member = c.servers[0]
    assert member.cluster is not None
    intruder = NatsServer(
        data_dir=tmp_path / "intruder", port=port, trust=ensure(tmp_path / "other"),
        cluster=Route("virtbus", "intruder", route_port, (*member.cluster.peers, route_port)),
    )  # fmt: skip
    async with intruder:
        for _ in range(300):  # until n1 has refused it, in its own words
            if "TLS route handshake error" in member.log_file.read_text(errors="replace"):
                break
            await asyncio.sleep(0.05)
        assert "Router connection closed: TLS Handshake Failure" in member.log_file.read_text()
        system = await nats.connect(servers=c.urls, tls=tls_context(trust.ca_file),
                                    user_credentials=str(trust.system_creds()))  # fmt: skip
        try:
            inbox = system.new_inbox()
            replies = await system.subscribe(inbox)
            await system.publish("$SYS.REQ.SERVER.PING.ROUTEZ", b"{}", reply=inbox)
            peers = {}
            for _ in c.servers:
                data = json.loads((await replies.next_msg(timeout=10)).data)
                names = {r["remote_name"] for r in data["data"]["routes"]}
                peers[data["server"]["name"]] = sorted(names)
        finally:
            await system.close()
    assert peers == {"n1": ["n2", "n3"], "n2": ["n1", "n3"], "n3": ["n1", "n2"]}


async def test_provisioning_replicates_the_log_and_refuses_what_the_bus_cannot_hold(
    cluster: tuple[NatsCluster, Trust], tmp_path: Path
) -> None:
    """Given every server (a comma-separated URL, as the `nats` CLI takes it), the admin
    provisions three copies of each stream; five are refused, saying why; so are three on a
    single server."""
    c, trust = cluster
    url = ",".join(c.urls)
    nc = await connect(url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    try:
        await until_ready(nc)
        js = nc.jetstream()
        with pytest.raises(ValidationError) as five:
            await provision(js, replicas=5)
        assert (five.value.field, five.value.message) == ("replicas", (
            "replicas: 5 copies of each stream asked, but the bus cannot hold them: no suitable "
            "peers for placement (a single server holds 1; a cluster at most one per server)"
        ))  # fmt: skip
        assert await provision(js, replicas=3) == [
            "stream VIRT_EVENTS (R3)", "stream VIRT_COMMANDS (R3)", "stream VIRT_WORK (R3)",
            "kv virt_heartbeats", "kv virt_leases",
        ]  # fmt: skip
        for stream in ("VIRT_EVENTS", "VIRT_COMMANDS", "VIRT_WORK", "KV_virt_heartbeats",
                       "KV_virt_leases"):  # fmt: skip
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream
    finally:
        await nc.close()
    async with NatsServer(data_dir=tmp_path / "single", port=-1) as single:
        nc = await connect(single.url)
        try:
            with pytest.raises(
                ValidationError, match="replicas > 1 not supported in non-clustered"
            ):
                await provision(nc.jetstream(), replicas=3)
        finally:
            await nc.close()
