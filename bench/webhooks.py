"""`virtbus bench webhooks`: events appended to the log, fanned out to local HTTP receivers.

Two runs on one throw-away nats-server, the same receivers and the same paced appends (one
`EventStore.append` per event, round robin over 100 VMs, `--rate` events/s):

1. virtbus: the dispatcher as its own process (`python -m orchestrator.webhooks`; `--shards N`
   processes splitting the subscriptions), one subscription per receiver (durable consumer,
   per-VM order, signatures, delivery records).
2. raw: `bench/webhooks_raw.py` as its own process, a core nats-py subscription
   POSTing the same bytes to every receiver with aiohttp, nothing else.

Latency is append->receipt: the envelope's `time` (stamped just before the append) to the
moment the receiver's handler runs, on this machine's one clock.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from typing import Any, cast

import msgspec

from bench.procstat import cpu_s
from bus import webhook_secrets as secrets
from bus.connect import bus_for_bench, connect
from bus.provision import provision
from bus.store import EventStore
from events import model as m
from events.names import EVENTS_STREAM, Ref

VMS = 100


class _Stamp(msgspec.Struct):
    time: datetime


_STAMP = msgspec.json.Decoder(_Stamp)


class _Receiver(asyncio.Protocol):
    """A lean HTTP/1.1 endpoint (keep-alive, Content-Length bodies, 204 answers): the harness
    must not be what limits either side, and aiohttp's server costs ~5x more per request."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.last = 0.0
        self.expect = 0
        self.done = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.conns: set[_Conn] = set()
        self.url = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"

    def on_body(self, body: bytes) -> None:
        now = time.time()
        self.latencies.append(now - _STAMP.decode(body).time.timestamp())
        self.last = now
        if len(self.latencies) >= self.expect:
            self.done.set()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self.server.wait_closed()


class _Conn(asyncio.Protocol):
    def __init__(self, receiver: _Receiver) -> None:
        self.receiver = receiver
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.receiver.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            eol = head.find(b"\r\n", at)
            size = int(head[at + 15 : eol if eol > 0 else None]) if at >= 0 else 0
            if len(self.buf) < end + 4 + size:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + size], self.buf[end + 4 + size :]
            self.receiver.on_body(body)
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


async def _child(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _append(store: EventStore, namespace: str, *, events: int, rate: float) -> float:
    """Paced appends to VMs in `namespace`; returns the wall time of the first."""
    refs = [Ref.vm(f"vm-{i}", namespace) for i in range(VMS)]
    t0, start = time.perf_counter(), time.time()
    for i in range(events):
        if rate:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        v = i // VMS
        e = m.MigrationProgress(migration="bench", percent=float(v))
        await store.append(refs[i % VMS], [e], expected_version=v)
    return start


async def _phase(
    receivers: list[_Receiver], store: EventStore, prefix: str, *, events: int, rate: float,
    pids: list[int],
) -> dict[str, float]:  # fmt: skip
    cpu0 = sum(cpu_s(p) for p in pids)
    for r in receivers:
        r.latencies.clear()
        r.expect = events
        r.done.clear()
    start = await _append(store, prefix, events=events, rate=rate)
    waits = [asyncio.create_task(r.done.wait(), name="bench-receiver") for r in receivers]
    _, pending = await asyncio.wait(waits, timeout=60)  # what is missing then is reported
    for t in pending:
        t.cancel()
    lat = sorted(x * 1000 for r in receivers for x in r.latencies)
    end = max(r.last for r in receivers)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    return {
        "deliveries": len(lat), "deliveries_per_s": len(lat) / max(end - start, 1e-9),
        "p50_ms": q[49], "p99_ms": q[98], "max_ms": lat[-1] if lat else 0.0,
        "cpu_us_per_delivery": (sum(cpu_s(p) for p in pids) - cpu0) / max(len(lat), 1) * 1e6,
    }  # fmt: skip


async def run(
    *, events: int, receivers: int, rate: float, server: str | None, shards: int = 1
) -> dict[str, Any]:
    env = {**os.environ, "VIRTBUS_WEBHOOK_ALLOW_NETS": "127.0.0.0/8"}
    recs = [_Receiver() for _ in range(receivers)]
    for r in recs:
        await r.start()
    try:
        async with bus_for_bench(server) as url:
            env["VIRTBUS_NATS_URL"] = url
            nc = await connect(url, name="virtbus-bench")
            try:
                js = nc.jetstream()
                await provision(js)
                store = EventStore(nc, source="/virtbus/bench")
                run_id = os.urandom(3).hex()
                ours = await _ours(recs, store, js, run_id, env=env, events=events, rate=rate,
                                   shards=shards)  # fmt: skip
                raw = await _raw(recs, store, run_id, env=env, events=events, rate=rate)
            finally:
                await nc.close()
    finally:
        for r in recs:
            await r.stop()
    return {
        "events": events, "receivers": receivers, "rate": rate, "shards": shards,
        **{f"virtbus_{k}": v for k, v in ours.items()}, **{f"raw_{k}": v for k, v in raw.items()},
        "throughput_ratio": ours["deliveries_per_s"] / max(raw["deliveries_per_s"], 1e-9),
        "p99_ratio": ours["p99_ms"] / max(raw["p99_ms"], 1e-9),
        "cpu_ratio": ours["cpu_us_per_delivery"] / max(raw["cpu_us_per_delivery"], 1e-9),
    }  # fmt: skip


async def _ours(
    recs: list[_Receiver], store: EventStore, js: Any, run_id: str, *, env: dict[str, str],
    events: int, rate: float, shards: int,
) -> dict[str, float]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-webhooks-") as tmp:
        consumers = []
        for i, r in enumerate(recs):
            name = f"bench-{run_id}-{i}"
            ref_key = secrets.new_ref(name)
            await secrets.store(js, ref_key, secrets.generate())
            sub = m.WebhookSubscribed(url=r.url, types=["io.virtbus.vm.*"],
                                      vm_pattern=f"wh-{run_id}/*", secret_ref=ref_key)  # fmt: skip
            res = await store.append(Ref.of("webhook", name), [sub], expected_version=0)
            consumers.append(f"webhook-{name}-{res.seq}")
        procs = [
            await _child("orchestrator.webhooks", "--data-dir", tmp, "--shard", f"{i}/{shards}",
                         env=env)
            for i in range(shards)
        ]  # fmt: skip
        try:
            for name in consumers:  # the dispatcher is ready when every consumer exists
                for _ in range(600):
                    try:
                        await js.consumer_info(EVENTS_STREAM, name)
                        break
                    except Exception:
                        await asyncio.sleep(0.05)
            return await _phase(recs, store, f"wh-{run_id}", events=events, rate=rate,
                                pids=[p.pid for p in procs])  # fmt: skip
        finally:
            for p in procs:
                await _stop(p)


async def _raw(
    recs: list[_Receiver], store: EventStore, run_id: str, *, env: dict[str, str], events: int,
    rate: float,
) -> dict[str, float]:  # fmt: skip
    prefix = f"raw-{run_id}"
    args = ["--server", env["VIRTBUS_NATS_URL"], "--subject", f"virt.vm.{prefix}.>"]
    proc = await _child("bench.webhooks_raw", *args, *(r.url for r in recs), env=env)
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return await _phase(recs, store, prefix, events=events, rate=rate, pids=[proc.pid])
    finally:
        await _stop(proc)


def report(r: dict[str, Any]) -> str:
    lines = [f"{r['events']} events at {r['rate']:g}/s to {r['receivers']} receivers, "
             f"{r['shards']} dispatcher process(es)"]  # fmt: skip
    lines.append(f"{'':8} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
                 f"{'got':>7} {'CPU us/delivery':>16}")  # fmt: skip
    for who in ("virtbus", "raw"):
        lines.append(
            f"{who:8} {r[f'{who}_deliveries_per_s']:13,.0f} {r[f'{who}_p50_ms']:8.1f} "
            f"{r[f'{who}_p99_ms']:8.1f} {r[f'{who}_max_ms']:8.1f} {r[f'{who}_deliveries']:7} "
            f"{r[f'{who}_cpu_us_per_delivery']:16.0f}"
        )
    lines.append(f"ratio: throughput {r['throughput_ratio']:.2f}, p99 {r['p99_ratio']:.2f}, "
                 f"CPU per delivery {r['cpu_ratio']:.2f}")  # fmt: skip
    return "\n".join(lines)
