"""`virtbus bench history`: one VM's whole history among many events, against raw nats-py.

The log: N events on a fresh server, of which `vm_events` belong to one VM, spread evenly from the
first message to the last (the worst case for a filtered read: its messages sit in every block of
the stream); the rest belong to 10,000 other VMs. The VM's events are real sealed, chained
envelopes with commands on the command stream; the others are envelopes of the same size whose
bodies are never read. Generation publishes with core NATS (JetStream stores them, unacked) and
waits until the stream holds them all.

Measured, alternating, `rounds` times each: `virtbus history`'s read (`read_history`: events by
batched direct get, chain-checked, plus the VM's commands, then `entries`, the fold line by line)
against raw nats-py reads: three filtered on the same subject (`js.get_msg(next=True,
direct=True)` message by message, an ordered consumer, batched direct gets with no decoding) and,
for the index path, pipelined direct gets of the same sequences with no decoding. `history` uses
the read model's index (built here by catching a ReadModel up, timed apart) and falls back to
the subject read without an orchestrator: both are measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from bus.connect import bus_for_bench, connect
from bus.history import entries, read_history
from bus.provision import provision
from bus.reader import direct_range
from bus.store import EventStore
from events import model as m
from events.envelope import chain_hash, encode, seal
from events.names import COMMANDS_STREAM, EVENTS_STREAM, Ref
from orchestrator.api import Api
from orchestrator.intake import Intake
from orchestrator.readmodel import ReadModel

NOISE_VMS: Final = 10_000
TARGET: Final = Ref.vm("bench-history-target")
_LIFE: Final[list[m.Event]] = [
    m.VMStartRequested(), m.VMScheduled(node="node-a", vmi_uid="0" * 32),
    m.LauncherCreated(node="node-a", pod="virt-launcher-bench-history-target-00000"),
    m.DomainDefined(node="node-a"), m.DomainStarted(node="node-a"), m.VMRunning(node="node-a"),
    m.VMStopRequested(), m.DomainStopped(node="node-a", reason="shutdown"), m.VMStopped(),
]  # fmt: skip


def _target_events(n: int) -> list[bytes]:
    out, prev = [], ""
    for v in range(1, n + 1):
        event = m.VMCreated(spec={"running": False}) if v == 1 else _LIFE[(v - 2) % len(_LIFE)]
        _, raw = seal(event, ref=TARGET, version=v, prevhash=prev, source="/virtbus/bench",
                      actor="bench", correlationid=f"bench-cmd-{v // 3}")  # fmt: skip
        out.append(raw)
        prev = chain_hash(raw)
    return out


async def _generate(nc: Client, *, total: int, vm_events: int) -> float:
    """Fill the stream; return the seconds it took."""
    t0 = time.perf_counter()
    mine = _target_events(vm_events)
    every = total / vm_events
    at = {int((i + 0.5) * every): raw for i, raw in enumerate(mine)}
    _, noise = seal(_LIFE[1], ref=Ref.vm("bench-noise"), version=2, prevhash="0" * 64,
                    source="/virtbus/bench", actor="bench",
                    correlationid="bench-cmd-0")  # fmt: skip
    for pos in range(total):
        raw = at.get(pos)
        if raw is not None:
            await nc.publish(TARGET.event_subject("x"), raw)
        else:
            await nc.publish(f"virt.vm.default.noise-{pos % NOISE_VMS}.scheduled", noise)
        if pos % 5000 == 4999:
            await nc.flush()
    for i in range(vm_events // 3 + 1):
        body = {"kind": "StartVM", "id": f"bench-cmd-{i}", "name": TARGET.name, "actor": "bench"}
        await nc.publish(TARGET.command_subject("StartVM"), json.dumps(body).encode())
    await nc.flush()
    js = nc.jetstream()
    for _ in range(600):
        if (await js.stream_info(EVENTS_STREAM)).state.messages >= total:
            return time.perf_counter() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"{EVENTS_STREAM} never reached {total} messages")


async def _ours(nc: Client, seqs: list[int]) -> int:
    return len(entries(await read_history(nc, TARGET)))


async def _ours_by_subject(nc: Client, seqs: list[int]) -> int:
    return len(entries(await read_history(nc, TARGET, indexed=False)))


async def _get_msg_loop(nc: Client, seqs: list[int]) -> int:
    js, seq, n = nc.jetstream(), 1, 0
    while True:
        try:
            msg = await js.get_msg(EVENTS_STREAM, seq=seq, subject=TARGET.wildcard, next=True,
                                   direct=True)  # fmt: skip
        except NotFoundError:
            return n
        n += 1
        seq = (msg.seq or seq) + 1


async def _ordered_consumer(nc: Client, seqs: list[int]) -> int:
    sub = await nc.jetstream().subscribe(TARGET.wildcard, stream=EVENTS_STREAM,
                                         ordered_consumer=True)  # fmt: skip
    n = 0
    try:
        async for msg in sub.messages:
            n += 1
            if msg.metadata.num_pending == 0:
                return n
    finally:
        await sub.unsubscribe()
    return n


async def _batched_direct(nc: Client, seqs: list[int]) -> int:
    inbox, n, seq = nc.new_inbox(), 0, 1
    sub = await nc.subscribe(inbox)
    try:
        while True:
            req = {"seq": seq, "next_by_subj": TARGET.wildcard, "batch": 1000}
            await nc.publish(f"$JS.API.DIRECT.GET.{EVENTS_STREAM}", encode(req), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=10)
                h = msg.headers or {}
                if "Status" in h:
                    break
                n, seq = n + 1, int(h["Nats-Sequence"]) + 1
            if h.get("Status") != "204" or h.get("Nats-Num-Pending", "0") == "0":
                return n
    finally:
        await sub.unsubscribe()


async def _direct_by_seq(nc: Client, seqs: list[int]) -> int:
    """What the index path does, raw: pipelined direct gets of the known sequences."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        for seq in seqs:
            await nc.publish(f"$JS.API.DIRECT.GET.{EVENTS_STREAM}", encode({"seq": seq}),
                             reply=inbox)  # fmt: skip
        for _ in seqs:
            await sub.next_msg(timeout=10)
        return len(seqs)
    finally:
        await sub.unsubscribe()


READERS: Final[dict[str, Callable[[Client, list[int]], Awaitable[int]]]] = {
    "virtbus": _ours,
    "virtbus_subject": _ours_by_subject,
    "get_msg": _get_msg_loop,
    "ordered_consumer": _ordered_consumer,
    "batched_direct_get": _batched_direct,
    "direct_get_by_seq": _direct_by_seq,
}
FILTERED: Final = ("get_msg", "ordered_consumer", "batched_direct_get")


@contextlib.asynccontextmanager
async def _read_model(nc: Client) -> AsyncIterator[float]:
    """The orchestrator's read model and API, caught up: what serves the history index."""
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-rm-") as tmp:
        store = EventStore(nc, source="/virtbus/bench")
        async with ReadModel(Path(tmp) / "readmodel.sqlite", store, verify=False) as rm:
            t0 = time.perf_counter()
            await rm.catch_up()
            api = Api(nc, intake=Intake(nc, store), readmodel=rm)
            await api.start()
            try:
                yield time.perf_counter() - t0
            finally:
                await api.stop()


async def run(*, events: int, vm_events: int, rounds: int, server: str | None) -> dict[str, Any]:
    async with bus_for_bench(server) as url:
        nc = await connect(url, name="virtbus-bench")
        try:
            js = nc.jetstream()
            await provision(js)
            if (await js.stream_info(EVENTS_STREAM)).state.messages:
                raise AssertionError("bench history needs an empty event stream (omit --server)")
            gen_s = await _generate(nc, total=events, vm_events=vm_events)
            times: dict[str, list[float]] = {k: [] for k in READERS}
            found = await direct_range(nc, EVENTS_STREAM, subject_filter=TARGET.wildcard)
            seqs = [seq for _, _, seq in found]
            async with _read_model(nc) as index_s:
                for r in range(rounds):
                    order = list(READERS) if r % 2 == 0 else list(reversed(READERS))
                    for name in order:
                        t0 = time.perf_counter()
                        n = await READERS[name](nc, seqs)
                        times[name].append((time.perf_counter() - t0) * 1000)
                        if not name.startswith("virtbus") and n != vm_events:
                            raise AssertionError(f"{name} read {n} events, not {vm_events}")
            commands = (await js.stream_info(COMMANDS_STREAM)).state.messages
        finally:
            await nc.close()
    out: dict[str, Any] = {"events": events, "vm_events": vm_events, "vm_commands": commands,
                           "rounds": rounds, "generate_s": round(gen_s, 1),
                           "index_catch_up_s": round(index_s, 1)}  # fmt: skip
    for name, ms in times.items():
        out[f"{name}_ms_p50"] = round(statistics.median(ms), 2)
        out[f"{name}_ms_min"] = round(min(ms), 2)
    # The baseline: the best raw read filtered on the VM's subject (< 1: virtbus is
    # faster). Apples to apples too: each virtbus path against the same protocol done raw.
    best = min(out[f"{k}_ms_p50"] for k in FILTERED)
    out["baseline_ms_p50"] = best
    out["ratio"] = round(out["virtbus_ms_p50"] / best, 2)
    out["subject_ratio"] = round(out["virtbus_subject_ms_p50"] / best, 2)
    out["index_vs_raw_by_seq"] = round(out["virtbus_ms_p50"] / out["direct_get_by_seq_ms_p50"], 2)
    out["subject_vs_raw_batched"] = round(
        out["virtbus_subject_ms_p50"] / out["batched_direct_get_ms_p50"], 2
    )
    out["target_ms"] = 50
    return out
