"""`virtbus bench control`: how fast the control plane turns "create this VM" into a running VM.

The issue's target is >= 300 VM starts/s with 1,000 VMs on 10 nodes and p99 creation->Running
<= 250 ms. This benchmark runs the whole path as deployed, on a throw-away nats-server (or
`--server`): the orchestrator as its own process (`python -m orchestrator`: API, intake,
controller, read model), M simulated nodes in another (`SimNode`s, the worker's side of the bus
with no hypervisor, `python -m bench.simnode`), and in this one a client that sends
N `ApplyVM` commands (runStrategy Always, 1 core, 64Mi) through `virtbus-api` with up to
`concurrency` in flight. A VM counts as Running when its first `DomainStarted` arrives on a single
follower of the log (no polling per VM); its latency is from just before its ApplyVM was sent.

Baseline, measured in the same run on the same server once the orchestrator has stopped: the bus
work a start costs with no orchestration at all. Per VM, one plain `js.publish` of a message the
size of the ApplyVM, then one plain `js.publish` per event the start flow appended for that VM
(counted from the log: every event of the VM up to its `DomainStarted`, each the average event
size), awaited one after another because each step of the flow waits for the one before; VMs run
`concurrency` at a time like the real run. It leaves out what orchestration adds by design
(request/reply to the API, the command stream hop, reads of the VM's history, OCC and dedup
headers, the work-queue item, three followers decoding every event, node heartbeats), so
`ratio` = starts_per_s / baseline_starts_per_s is the share of the raw bus rate the control plane
keeps. Publishing one message per event (rather than one atomic batch per append) makes the
baseline the cost of writing the same events individually: the plain-client equivalent.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from bench.procstat import cpu_by_part
from bench.rig import bench_bus, login_args
from bus.client import Rejected, query, send
from bus.connect import connect
from bus.provision import provision
from bus.server import die_with_parent
from bus.store import EventStore
from bus.trust import Trust
from events import commands as c
from events import model as m
from events.envelope import encode
from events.errors import BusUnavailable
from events.manifest import to_commands
from events.model import TOKEN
from events.names import EVENTS_STREAM, Ref
from events.protocol import Query

RAW_STREAM = "BENCH_CONTROL_RAW"
VM_MEMORY = 64 << 20
NODE_GRACE_S = 120.0  # the bench loads the loop the heartbeats share: no spurious NodeLost
READY_WAIT_S = 20.0
SIZE_SAMPLE = 20  # VMs whose events' average size is what the baseline publishes


def apply_command(name: str) -> c.ApplyVM:
    doc = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {"domain": {"cpu": {"cores": 1}, "memory": {"guest": "64Mi"}}},
            },
        },
    }
    cmds, _ = to_commands(doc)
    cmd = cmds[0]
    if not isinstance(cmd, c.ApplyVM):
        raise AssertionError(f"expected an ApplyVM, got {type(cmd).__name__}")
    return cmd


async def run(
    *, vms: int, nodes: int, server: str | None, concurrency: int = 50, rate: float | None = None,
    secure: bool = False, cluster: int = 0, sync_always: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """`cluster`: that many servers and the log in as many copies; `sync_always`: every write
    on disk before it is acknowledged (the production configuration has all three)."""
    async with bench_bus(server, secure=secure, cluster=cluster, sync_always=sync_always) as (
        url, trust,
    ):  # fmt: skip
        nc = await connect(url, name="virtbus-bench-client")
        try:
            out = await _run(nc, url, vms=vms, nodes=nodes, concurrency=concurrency, rate=rate,
                             trust=trust, replicas=cluster or 1)  # fmt: skip
        finally:
            await nc.close()
    out.update(secure=trust is not None, replicas=cluster or 1, fsync_always=sync_always)
    return out


async def spawn_part(*args: str) -> asyncio.subprocess.Process:
    """A part of the stack as its own process, as deployed: it dies with this one."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )  # fmt: skip


async def end_part(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _run(
    nc: Client, url: str, *, vms: int, nodes: int, concurrency: int, rate: float | None,
    trust: Trust | None, replicas: int,
) -> dict[str, Any]:  # fmt: skip
    await provision(nc.jetstream(), replicas=replicas)
    run_id = uuid.uuid4().hex[:6]
    per_node = -(-vms // nodes)
    prefix = f"bench-{run_id}-node"
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-orchestrator-") as tmp:
        procs = [
            await spawn_part("orchestrator", "--server", url, "--data-dir", tmp,
                         "--node-grace", str(NODE_GRACE_S), "--replicas", str(replicas),
                         *login_args(trust, "orchestrator")),
            await spawn_part("bench.simnode", "--server", url, *login_args(trust, "simnodes"),
                         "--prefix", prefix,
                         "--count", str(nodes), "--cpus", str(max(8, per_node)),
                         "--memory-bytes", str(2 * per_node * VM_MEMORY + (1 << 30))),
        ]  # fmt: skip
        try:
            await until_api_answers(nc)
            await until_nodes_known(nc, {f"{prefix}-{k}" for k in range(nodes)})
            cpu0, bus0 = cpu_by_part(), await _bus_tally(nc)
            out = await measure(nc, run_id=run_id, vms=vms, concurrency=concurrency, rate=rate)
            cpu1, bus1 = cpu_by_part(), await _bus_tally(nc)
            per = out["running"]  # none started: no cost per start to say
            out["cpu_ms_per_start"] = {
                part: (cpu1[part] - cpu0.get(part, 0.0)) * 1e3 / per for part in sorted(cpu1)
            } if per else {}  # fmt: skip
            out["bus_per_start"] = {
                k: (bus1[k] - bus0.get(k, 0)) / per
                for k in sorted(bus1) if bus1[k] > bus0.get(k, 0)
            } if per else {}  # fmt: skip
        finally:
            for proc in reversed(procs):
                await end_part(proc)
    raw = await _baseline(nc, out, vms=vms, concurrency=concurrency, replicas=replicas)
    out.update({f"baseline_{k}": v for k, v in raw.items()})
    if rate:
        paced = await _baseline(nc, out, vms=vms, concurrency=concurrency, replicas=replicas,
                                rate=rate)  # fmt: skip
        out.update({f"paced_baseline_{k}": v for k, v in paced.items()})
    out["nodes"] = nodes
    out["concurrency"] = concurrency
    out["offered_rate"] = rate or 0.0  # 0: as fast as virtbus-api accepts commands
    out["ratio"] = out["starts_per_s"] / out["baseline_starts_per_s"]
    return out


async def _bus_tally(nc: Client) -> dict[str, int]:
    """Messages each stream holds so far ("VIRT_EVENTS"), and those each durable consumer has
    delivered ("VIRT_WORK acks": one ack each, a replicated write like an append); the
    orchestrator's followers are ephemeral, in memory, and not counted."""
    js, out = nc.jetstream(), {}
    for info in await js.streams_info():
        name = info.config.name or ""
        out[name] = info.state.last_seq
        acks = 0
        for ci in await js.consumers_info(name):
            if ci.config.durable_name and ci.delivered is not None:
                acks += ci.delivered.consumer_seq
        out[f"{name} acks"] = acks
    return out


async def until_api_answers(nc: Client) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            await query(nc, Query(what="nodes"), wait_s=2)
            return
        except BusUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def until_nodes_known(nc: Client, names: set[str]) -> None:
    """The read model lists every node; the controller follows the same log just as fast."""
    deadline = time.monotonic() + READY_WAIT_S
    while not names <= {n.name for n in (await query(nc, Query(what="nodes"))).nodes}:
        if time.monotonic() > deadline:
            raise BusUnavailable(f"the orchestrator did not see the nodes within {READY_WAIT_S}s")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the controller's own follower


async def pool(
    n: int, concurrency: int, job: Callable[[int], Awaitable[None]], *, rate: float | None = None
) -> None:
    """Run job(0..n-1) with at most `concurrency` in flight (named tasks, all awaited); with
    `rate`, job i starts no earlier than i/rate seconds in: an open-loop offered load."""
    todo = iter(range(n))
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def worker() -> None:
        for i in todo:
            if rate:
                await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            await job(i)

    tasks = [
        asyncio.create_task(worker(), name=f"bench-control-worker-{k}")
        for k in range(min(concurrency, n))
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def measure(
    nc: Client, *, run_id: str, vms: int, concurrency: int, rate: float | None
) -> dict[str, Any]:
    names = [f"bench-{run_id}-vm-{i}" for i in range(vms)]
    cmds = [apply_command(name) for name in names]
    store = EventStore(nc, source="/virtbus/bench")
    first_seq = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq + 1

    running: dict[str, float] = {}
    events = {name: 0 for name in names}  # each VM's events up to its DomainStarted
    all_running = asyncio.Event()
    # Only the starts, as a user waiting for them would: this process shares the machine's
    # cores with the stack it measures. A start's version is the VM's events up to it.
    started = TOKEN[m.DomainStarted]
    subjects = [f"virt.vm.default.*.{started}", f"virt.vm.default.*.{started}.*"]

    async def follow() -> None:
        async for rec in store.follow(from_seq=first_seq, subjects=subjects):
            name = rec.subject.split(".")[3]
            if name in running or name not in events:
                continue
            events[name] = rec.envelope.version
            running[name] = time.perf_counter()
            if len(running) == vms:
                all_running.set()

    sent: dict[str, float] = {}
    accepted = rejected = 0

    async def start_one(i: int) -> None:
        nonlocal accepted, rejected
        sent[names[i]] = time.perf_counter()
        try:
            await send(nc, cmds[i], wait_s=30)
            accepted += 1
        except Rejected:
            rejected += 1

    follower = asyncio.create_task(follow(), name="bench-control-follow")
    try:
        t0 = time.perf_counter()
        await pool(vms, concurrency, start_one, rate=rate)
        send_s = time.perf_counter() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_running.wait(), timeout=max(30.0, vms * 0.05))
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

    event_bytes, sampled = await _event_sizes(store, run_id=run_id, names=list(running))
    lat_ms = sorted((running[n] - sent[n]) * 1e3 for n in running)
    pct = statistics.quantiles(lat_ms, n=100, method="inclusive") if len(lat_ms) > 1 else []
    counted = sum(events[n] for n in running)
    out: dict[str, Any] = {
        "vms": vms,
        "accepted": accepted,
        "rejected": rejected,
        "running": len(running),
        "commands_per_s": accepted / send_s,
        "starts_per_s": len(running) / (max(running.values()) - t0) if running else 0.0,
        "create_to_running_p50_ms": pct[49] if pct else (lat_ms[0] if lat_ms else 0.0),
        "create_to_running_p95_ms": pct[94] if pct else (lat_ms[0] if lat_ms else 0.0),
        "create_to_running_p99_ms": pct[98] if pct else (lat_ms[0] if lat_ms else 0.0),
        "create_to_running_max_ms": lat_ms[-1] if lat_ms else 0.0,
        "events_per_vm": counted / len(running) if running else 0.0,
        "event_bytes": event_bytes // sampled if sampled else 0,
        "command_bytes": len(encode(cmds[0])),
    }
    return out


async def _event_sizes(store: EventStore, *, run_id: str, names: list[str]) -> tuple[int, int]:
    """Bytes and count of the events of a few VMs' histories: their average size is what the
    baseline publishes."""
    total = count = 0
    for name in names[:SIZE_SAMPLE]:
        for rec in await store.read(Ref("vm", "default", name)):
            total, count = total + len(encode(rec.envelope)), count + 1
    return total, count


async def _baseline(
    nc: Client, measured: dict[str, Any], *, vms: int, concurrency: int, replicas: int,
    rate: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The raw run: as fast as it goes, or at `rate` VMs/s (what the same bus work costs at
    the offered load, where the servers batch and fsync less at a time)."""
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=RAW_STREAM,
            subjects=["bench.control.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
        )
    )
    command = b"x" * measured["command_bytes"]
    event = b"x" * max(1, measured["event_bytes"])
    per_vm = max(1, round(measured["events_per_vm"]))
    lat_ms: list[float] = []

    async def start_one(i: int) -> None:
        t = time.perf_counter()
        await js.publish(f"bench.control.cmd.{i}", command)
        for _ in range(per_vm):
            await js.publish(f"bench.control.vm.{i}", event)
        lat_ms.append((time.perf_counter() - t) * 1e3)

    try:
        cpu0, t0 = cpu_by_part(), time.perf_counter()
        await pool(vms, concurrency, start_one, rate=rate)
        wall, cpu1 = time.perf_counter() - t0, cpu_by_part()
    finally:
        await js.delete_stream(RAW_STREAM)
    return {
        "starts_per_s": vms / wall,
        "publishes_per_vm": 1 + per_vm,
        "p99_ms": statistics.quantiles(lat_ms, n=100, method="inclusive")[98],
        "cpu_ms_per_start": {
            part: (cpu1[part] - cpu0.get(part, 0.0)) * 1e3 / vms for part in sorted(cpu1)
        },
    }
