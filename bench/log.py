"""`virtbus bench log`: the event store against plain nats-py on the same server, same bytes.

Append: `store.append` one event at a time (100 VMs round robin; OCC, hash chain, dedup id) versus
plain `js.publish` of bytes of the same size, in alternating rounds so that drift of this noisy
2-core machine hits both alike; then atomic batches versus raw atomic batches. Replay: decode, chain
check and fold of every VM (read by our own protocol reader, `bus/leanpull.py`) versus a raw
callback pull of the same stream through nats-py, alternated, best of three; the lean reader's own
rate with a no-op handler is printed too (`replay_lean_pull_eps`).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from bench.rig import bench_bus
from bus.cluster import until_ready
from bus.connect import connect
from bus.provision import provision
from bus.reader import pull_all
from bus.store import EventStore
from bus.vms import VMRepository
from events import model as m
from events.envelope import encode
from events.names import EVENTS_STREAM, Ref

RAW_STREAM = "BENCH_RAW"
VMS = 100
ROUNDS = 10


def _event(i: int) -> m.Event:
    if i == 0:
        return m.VMCreated(spec={"running": False, "template": {"spec": {"domain": {}}}})
    return m.VMScheduled(node=f"node-{i % 10}", vmi_uid=uuid.uuid4().hex, attempt=i)


async def run(
    *, events: int, batch: int, server: str | None, sync_always: bool, secure: bool = False,
    cluster: int = 0,
) -> dict[str, Any]:  # fmt: skip
    async with bench_bus(server, sync_always=sync_always, secure=secure, cluster=cluster) as (
        url, trust,
    ):  # fmt: skip
        nc = await connect(url, name="virtbus-bench")
        try:
            js = nc.jetstream()
            await until_ready(nc)  # (a cluster: once it has elected its leaders)
            await provision(js, replicas=cluster or 1)
            # as many copies as the log has (a cluster's stack keeps three): like with like
            copies = (await js.stream_info(EVENTS_STREAM)).config.num_replicas or 1
            await js.add_stream(
                StreamConfig(name=RAW_STREAM, subjects=["bench.raw.>"], storage=StorageType.FILE,
                             allow_atomic=True, num_replicas=copies)
            )  # fmt: skip
            try:
                out = await _measure(nc, events=events, batch=batch)
                out["replicas"] = copies
            finally:
                await js.delete_stream(RAW_STREAM)
        finally:
            await nc.close()
    out["fsync"] = "always" if sync_always else "default (2 min)"
    out["secure"] = trust is not None
    return out


async def _measure(nc: Client, *, events: int, batch: int) -> dict[str, Any]:
    js = nc.jetstream()
    run_id = uuid.uuid4().hex[:6]
    refs = [Ref.vm(f"bench-{run_id}-{i}") for i in range(VMS)]
    store = EventStore(nc, source="/virtbus/bench")
    sample = encode(_event(1))  # sized like the real envelopes below, fixed up after round one
    lat: list[float] = []
    ours = raw = 0.0
    per_round = max(1, events // ROUNDS)
    done = 0
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for i in range(done, done + per_round):
            ref, v = refs[i % VMS], i // VMS
            t = time.perf_counter()
            await store.append(ref, [_event(v)], expected_version=v, command_id=f"{run_id}-{i}")
            lat.append(time.perf_counter() - t)
        ours += time.perf_counter() - t0
        if len(sample) < 300:
            sample = encode((await store.read(refs[0]))[-1].envelope)
        t0 = time.perf_counter()
        for i in range(done, done + per_round):
            await js.publish(f"bench.raw.{i % VMS}", sample)
        raw += time.perf_counter() - t0
        done += per_round
    out: dict[str, Any] = {"events": done, "vms": VMS, "batch": batch, "event_bytes": len(sample)}
    out["append_eps"], out["append_baseline_eps"] = done / ours, done / raw
    out["append_p50_us"] = statistics.median(lat) * 1e6
    out["append_p99_us"] = statistics.quantiles(lat, n=100)[98] * 1e6

    batches = max(ROUNDS, done // batch)
    ours = raw = 0.0
    for i in range(batches):
        ref = refs[i % VMS]
        t0 = time.perf_counter()
        head = await store.head(ref)
        await store.append(ref, [_event(head.version + k) for k in range(batch)],
                           expected_version=head.version)  # fmt: skip
        t1 = time.perf_counter()
        await _raw_batch(nc, [(f"bench.raw.b{i % VMS}", sample)] * batch)
        raw += time.perf_counter() - t1
        ours += t1 - t0
    out["batch_append_eps"] = batches * batch / ours
    out["batch_append_baseline_eps"] = batches * batch / raw

    replays, pulls, lean = [], [], []
    for _ in range(3):
        t0 = time.perf_counter()
        states, n = await VMRepository(store).rebuild()  # decode, chain check and fold of every VM
        replays.append(n / (time.perf_counter() - t0))
        if len(states) < VMS:
            raise AssertionError(f"replay folded {len(states)} VMs, expected {VMS}")
        t0 = time.perf_counter()  # the baseline: the fastest pull we know through nats-py
        n = await pull_all(nc, store.stream, lambda data, subject, seq: None, lean=False)
        pulls.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()  # our own reader with nothing to do: the ceiling of a replay
        n = await pull_all(nc, store.stream, lambda data, subject, seq: None)
        lean.append(n / (time.perf_counter() - t0))
    out["replay_lean_pull_eps"] = max(lean)
    out["replayed"] = n
    out["replay_eps"], out["replay_baseline_eps"] = max(replays), max(pulls)
    for key in ("append", "batch_append", "replay"):
        out[f"{key}_ratio"] = out[f"{key}_eps"] / out[f"{key}_baseline_eps"]
    return out


async def _raw_batch(nc: Client, msgs: list[tuple[str, bytes]]) -> None:
    """The atomic batch protocol by hand: first as a request, middle published, commit acked."""
    bid = uuid.uuid4().hex
    for n, (subject, raw) in enumerate(msgs, 1):
        h = {"Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(n)}
        if n == len(msgs):
            h["Nats-Batch-Commit"] = "1"
        if n in (1, len(msgs)):
            await nc.request(subject, raw, headers=h, timeout=5)
        else:
            await nc.publish(subject, raw, headers=h)
