"""Faults under load, Jepsen-minded: appenders record every append the bus acknowledged (aggregate,
version, stream sequence), a server is SIGKILLed mid-load, and after recovery the log is checked
against the record: every acked event present at its sequence, each aggregate's versions gap-free,
every hash chain sound, nothing stored twice.

Bounded in time: a few hundred appends either side of the kill; an election takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import ServiceUnavailableError
from proxy import Proxy

from bus.cluster import CLUSTER_NAME, NatsCluster, free_ports, until_ready
from bus.connect import Access, connect
from bus.provision import provision
from bus.server import NatsServer, Route
from bus.store import EventStore
from events import model as m
from events.errors import BusUnavailable
from events.names import EVENTS_STREAM, Ref

Acked = tuple[Ref, int, int]  # (aggregate, version of its last event, stream sequence)
BEFORE, AFTER = 150, 150  # acks before the kill, and after it


async def appender(
    store: EventStore, refs: Sequence[Ref], acked: list[Acked], stop: asyncio.Event
) -> None:
    """Appends to `refs` in turn, one event or two (an atomic batch), each at the version the
    last ack said, until `stop`; records every ack. Any failure (a conflict: an append of ours
    not recognised; the bus not back within the store's bound) fails the test."""
    versions = dict.fromkeys(refs, 0)
    turn = 0
    while not stop.is_set():
        ref = refs[turn % len(refs)]
        turn += 1
        if versions[ref] == 0:
            events: list[m.Event] = [m.VMCreated(spec={"running": False}, run_strategy="Halted")]
        elif turn % 3:
            events = [m.VMStartRequested()]
        else:
            events = [m.VMStartRequested(), m.VMStopRequested()]
        result = await store.append(ref, events, expected_version=versions[ref])
        versions[ref] = result.version
        acked.append((ref, result.version, result.seq))


async def until_acked(acked: list[Acked], count: int, tasks: list[asyncio.Task[None]]) -> None:
    """Until `count` acks are recorded; an appender's failure is raised at once."""
    for _ in range(6000):
        if len(acked) >= count:
            return
        for t in tasks:
            if t.done():
                t.result()  # (raises what it died of)
        await asyncio.sleep(0.01)
    pytest.fail(f"only {len(acked)} of {count} appends acknowledged")


def loaded(
    stores: list[EventStore], *, during: asyncio.Event, acked: list[Acked]
) -> list[asyncio.Task[None]]:
    """An appender per store, two aggregates each, appending until `during` is set."""
    return [
        asyncio.create_task(
            appender(s, [Ref.vm(f"fault-{i}-{j}") for j in range(2)], acked, during),
            name=f"fault-appender-{i}",
        )
        for i, s in enumerate(stores)
    ]


async def under_load(
    conns: list[Client], *, fault: Callable[[], Awaitable[None]], resent: bool = True
) -> list[Acked]:
    """`fault` after BEFORE acks of an appender per connection, then AFTER acks more: every ack
    recorded. The appenders await nothing but their appends, so the fault meets appends in
    flight; with `resent`, some of them must have been sent again."""
    acked: list[Acked] = []
    stop = asyncio.Event()
    stores = [EventStore(nc, source="/tests/faults") for nc in conns]
    tasks = loaded(stores, during=stop, acked=acked)
    try:
        await until_acked(acked, BEFORE, tasks)
        await fault()
        await until_acked(acked, len(acked) + AFTER, tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for store in stores:
            store.close()
    if resent:
        assert sum(s.resent for s in stores) >= 1
    return acked


async def check_survived(nc: Client, acked: list[Acked]) -> None:
    """Every acked event is in the log at its sequence; each aggregate's history is gap-free,
    chained, and holds each version once; no event is stored twice (by its id, across all)."""
    store = EventStore(nc)
    ids: list[str] = []
    for ref in sorted({ref for ref, _, _ in acked}, key=str):
        history = await store.read(ref)  # chain-checked from version 1: a fork or gap raises
        assert [r.envelope.version for r in history] == list(range(1, len(history) + 1)), ref
        at = {r.envelope.version: r.seq for r in history}
        mine = [(v, s) for r, v, s in acked if r == ref]
        assert [(v, at.get(v)) for v, _ in mine] == mine, ref
        ids += [r.envelope.id for r in history]
    assert len(ids) == len(set(ids))


async def all_current(nc: Client, *, dead: str, within: float = 30) -> None:
    """Until every live replica of the log has caught up with its leader (reads may be served by
    any of them)."""
    js = nc.jetstream()
    info = None
    for _ in range(int(within / 0.05)):
        try:
            info = await js.stream_info(EVENTS_STREAM)
        except (ServiceUnavailableError, TimeoutError):  # (a server rejoining: a moment's 503)
            await asyncio.sleep(0.05)
            continue
        replicas = (info.cluster.replicas or []) if info.cluster else []
        live = [r for r in replicas if r.name != dead]
        if (
            info.cluster
            and info.cluster.leader
            and live
            and all(r.current and not r.lag for r in live)
        ):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the log's replicas did not catch up: {info and info.cluster}")


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
async def test_the_stream_leader_lost_mid_load_loses_nothing_acked(
    tmp_path: Path, fault: str
) -> None:
    """The log's leader SIGKILLed, or SIGSTOPped until the others have elected another and taken
    AFTER appends (longer than the election timeout), then resumed: it comes back a follower."""
    async with NatsCluster(data_dir=tmp_path / "servers", size=3) as cluster:
        # as a component connects (`lasting`: its pings find a paused server), given every server
        conns = [
            await connect(",".join(cluster.urls), access=Access(), lasting=True) for _ in range(3)
        ]
        paused: list[NatsServer] = []
        try:
            await until_ready(conns[0])
            await provision(conns[0].jetstream(), replicas=3)
            leaders: list[str] = []

            async def lose_the_leader() -> None:
                info = await conns[0].jetstream().stream_info(EVENTS_STREAM)
                assert info.cluster is not None and info.cluster.leader is not None
                leaders.append(info.cluster.leader)
                leader = cluster.servers[int(leaders[0][1:]) - 1]
                assert leader.pid is not None
                if fault == "sigstop":
                    paused.append(leader)
                os.kill(leader.pid, signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)

            acked = await under_load(conns, fault=lose_the_leader)
            info = await conns[0].jetstream().stream_info(EVENTS_STREAM)
            assert info.cluster is not None and info.cluster.leader not in (None, leaders[0])
            for server in paused:  # back, and behind: it catches up
                os.kill(server.pid or 0, signal.SIGCONT)
            await all_current(conns[0], dead=leaders[0] if fault == "sigkill" else "")
            await check_survived(conns[0], acked)
        finally:
            for server in paused:  # (whatever happened: it can be stopped)
                if server.pid is not None:
                    os.kill(server.pid, signal.SIGCONT)
            for nc in conns:
                await nc.close()


async def test_a_single_servers_sigkill_mid_append_loses_nothing_acked(tmp_path: Path) -> None:
    """With `sync_interval: always` (what `virtbus up` runs): the server dies mid-load and comes
    back on its store; the appends in flight are sent again and land once."""
    [port] = free_ports(1)
    server = NatsServer(data_dir=tmp_path / "single", port=port, sync_always=True)
    async with server:
        conns = [
            await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
            for _ in range(2)
        ]
        try:
            await provision(conns[0].jetstream())

            async def kill_and_restart() -> None:
                server.kill()
                await server.exited()
                await server.start()  # the same port, the same store dir

            # The appends in flight are recovered either way: a single one is sent again; an
            # atomic batch's request is held by nats-py through the reconnect and answered after
            # the restart: stored, or "incomplete" (its first messages died with the old server)
            # and then sent again whole. A kill that meets only stored batches resends nothing.
            acked = await under_load(conns, fault=kill_and_restart, resent=False)
            await check_survived(conns[0], acked)
        finally:
            for nc in conns:
                await nc.close()


class Partitionable:
    """Three servers whose every route runs through a proxy of the test's, one per direction
    (n_i dials n_j through `proxies[i, j]`), so any one server can be cut off from the others
    and healed. Each advertises a route port nothing listens on: a peer that learns of it from
    another (gossip) cannot dial it behind the proxies' back."""

    def __init__(self, data_dir: Path) -> None:
        *clients, nowhere = free_ports(4)
        self.routes = free_ports(3)
        self.proxies = {(i, j): Proxy(self.routes[j]) for i in range(3) for j in range(3) if i != j}
        self.servers = [
            NatsServer(data_dir=data_dir / f"n{i + 1}", port=clients[i], ready_timeout=30,
                       cluster=Route(CLUSTER_NAME, f"n{i + 1}", self.routes[i], (), nowhere))
            for i in range(3)
        ]  # fmt: skip
        self._nowhere = nowhere

    async def __aenter__(self) -> Partitionable:
        await asyncio.gather(*(p.start() for p in self.proxies.values()))
        for i, s in enumerate(self.servers):
            peers = tuple(p.port for (a, _), p in self.proxies.items() if a == i)
            s.cluster = Route(CLUSTER_NAME, f"n{i + 1}", self.routes[i], peers, self._nowhere)
        try:
            await asyncio.gather(*(s.start() for s in self.servers))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))
        await asyncio.gather(*(p.stop() for p in self.proxies.values()))

    def cut(self, i: int, *, heal: bool = False) -> None:
        for pair, proxy in self.proxies.items():
            if i in pair:
                proxy.heal() if heal else proxy.sever()


async def stream_leader(nc: Client) -> str:
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def steady_leader(nc: Client, *, led_for: float = 3, within: float = 30) -> str:
    """The log's leader once it has led for `led_for` seconds: one elected as the stream was
    made may hand over soon after, and a test that cuts the leader off must cut the one that
    stays."""
    for _ in range(int(within / 0.1)):
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        leader, since = (info.cluster.leader, info.cluster.leader_since) if info.cluster else (
            None, None)  # fmt: skip
        if leader and since and (datetime.now(UTC) - since).total_seconds() >= led_for:
            return leader
        await asyncio.sleep(0.1)
    pytest.fail(f"the log's leadership did not settle within {within:g}s")


async def until_leader(nc: Client, name: str, *, within: float = 30) -> None:
    """Until `name` leads the log: asked to take over once its copy is current."""
    ask = json.dumps({"placement": {"preferred": name}}).encode()
    subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}"
    leader = None
    for _ in range(int(within / 0.1)):
        with contextlib.suppress(Exception):  # (mid-election: no answer, or no leader yet)
            info = await nc.jetstream().stream_info(EVENTS_STREAM)
            if (leader := info.cluster and info.cluster.leader) == name:
                return
            if leader is not None:
                await nc.request(subject, ask, timeout=5)
        await asyncio.sleep(0.1)
    pytest.fail(f"{name} did not take the log's lead within {within:g}s (it is {leader})")


Msg = tuple[str, bytes]  # a message's subject and data


async def the_log(nc: Client) -> tuple[int, list[Msg]]:
    """The log as its leader holds it: last sequence, and every message's subject and data."""
    js = nc.jetstream()
    last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    msgs = [await js.get_msg(EVENTS_STREAM, seq) for seq in range(1, last + 1)]
    return last, [(msg.subject, msg.data or b"") for msg in msgs]


async def its_log(
    nc: Client, name: str, *, like: tuple[int, list[Msg]], within: float = 30
) -> tuple[int, list[Msg]]:
    """`the_log` as `name` holds it, read while it leads, once it is `like` (or as it is after
    `within`). A server healed and made leader can answer 503 for a moment, or with the state
    it had cut off (seen: 210 of 412 messages, for a second): it is still catching up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    log: tuple[int, list[Msg]] = (0, [])
    while True:
        await until_leader(nc, name, within=within)
        with contextlib.suppress(ServiceUnavailableError, TimeoutError):
            read = await the_log(nc)
            if await stream_leader(nc) == name:
                log = read
        if log == like or loop.time() > deadline:
            return log
        await asyncio.sleep(0.1)


async def test_a_server_cut_off_refuses_writes_and_catches_up_when_healed(tmp_path: Path) -> None:
    """The log's leader cut off from the other two: its clients' appends are refused (no
    leader answers them), the other two elect a leader and go on acknowledging appends, and when
    healed the cut-off server's copy of the log is the majority's, message for message (what it
    took while cut off, if anything, is gone)."""
    async with Partitionable(tmp_path) as part:
        urls = [s.url for s in part.servers]
        first = await connect(urls[0], access=Access(), lasting=True)
        conns: list[Client] = [first]
        tried: list[asyncio.Task[object]] = []
        try:
            await until_ready(first)
            await provision(first.jetstream(), replicas=3)
            cut = int((await steady_leader(first))[1:]) - 1
            majority = ",".join(u for i, u in enumerate(urls) if i != cut)
            conns += [await connect(majority, access=Access(), lasting=True) for _ in range(2)]
            minority = await connect(urls[cut], access=Access())
            conns.append(minority)

            refused = EventStore(minority, source="/tests/partition", timeout=1, retry_for=3)

            async def cut_the_leader() -> None:
                assert await stream_leader(conns[1]) == f"n{cut + 1}"  # still
                part.cut(cut)
                created = m.VMCreated(spec={"running": False}, run_strategy="Halted")
                append = refused.append(Ref.vm("minority"), [created], expected_version=0)
                tried.append(asyncio.create_task(append, name="fault-minority-append"))

            acked = await under_load(conns[1:3], fault=cut_the_leader)
            assert await stream_leader(conns[1]) != f"n{cut + 1}"
            assert all(p.carried for p in part.proxies.values())  # every route ran through one
            # Cut off, it still believes it leads (NATS steps a leader down 10-20 s after it
            # lost its quorum): it takes the append and cannot commit it; the resends find it
            # in flight until the store gives up, saying the outcome is unknown.
            with pytest.raises(BusUnavailable) as err:
                await tried[0]
            assert str(err.value) == (
                "append to VIRT_EVENTS: its outcome is unknown: duplicate message id is in "
                "process (a leader that cannot commit it, cut off?)"
            )
            await check_survived(conns[1], acked)
            majority_log = await the_log(conns[1])
            part.cut(cut, heal=True)
            await all_current(conns[1], dead="")
            # its copy made the leader's, then read: what it holds, not what another serves
            assert await its_log(minority, f"n{cut + 1}", like=majority_log) == majority_log
            never = Ref.vm("minority").wildcard.removesuffix(">")  # it had no quorum, ever
            assert [subject for subject, _ in majority_log[1] if subject.startswith(never)] == []
        finally:
            for t in tried:
                t.cancel()
            for nc in conns:
                await nc.close()
