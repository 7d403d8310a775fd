"""`virtbus bench scale`: many VMs on many simulated nodes, and what the orchestrator costs then.

Issue 15's scale test: 10,000 VMs on 100 nodes (OpenShift Virtualization's tested maximum per
cluster). The stack runs as `bench control` runs it (the orchestrator as its own process, the
nodes simulated in another, heartbeating every 2 s as a worker does), the VMs are created and
started through virtbus-api, and then, with all of them Running:

- the orchestrator's resident memory (VmRSS) and its CPU over a steady stretch in which nothing
  changes but the nodes' heartbeats (targets: <= 1 GiB, <= 10 % of a core);
- `get vm NAME` through virtbus-api, p50/p99 over random VMs (target p99 <= 20 ms), and
  `get vms -A` (every VM, as `-o json` asks for them; target <= 1 s);
- one VM's history among all of it (the read model's index, then direct gets, as `history` does);
- the orchestrator stopped (SIGTERM) and started again on its data dir: the time until
  virtbus-api answers, which it does once the read model has caught up (target <= 10 s), and
  until the controller has folded the whole log and acts (a VM created then gets Running).

Baseline: none is meaningful for memory or a restart; the figures stand against the targets.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from nats.aio.client import Client

from bench.control import (
    VM_MEMORY,
    apply_command,
    end_part,
    measure,
    spawn_part,
    until_api_answers,
    until_nodes_known,
)
from bench.procstat import cpu_s, rss_bytes
from bench.rig import bench_bus
from bus.client import query, send
from bus.connect import connect
from bus.history import read_history
from bus.provision import provision
from events.names import EVENTS_STREAM, Ref
from events.protocol import Query

NODE_GRACE_S = 120.0
HEARTBEAT_S = 2.0  # as a node worker's
GETS = 300


async def run(
    *, vms: int, nodes: int, server: str | None, concurrency: int = 50, steady_s: float = 10.0
) -> dict[str, Any]:
    async with bench_bus(server) as (url, _):
        nc = await connect(url, name="virtbus-bench-scale")
        try:
            return await _run(nc, url, vms=vms, nodes=nodes, concurrency=concurrency,
                              steady_s=steady_s)  # fmt: skip
        finally:
            await nc.close()


async def _run(
    nc: Client, url: str, *, vms: int, nodes: int, concurrency: int, steady_s: float
) -> dict[str, Any]:
    await provision(nc.jetstream())
    run_id = uuid.uuid4().hex[:6]
    per_node = -(-vms // nodes)
    prefix = f"bench-{run_id}-node"
    out: dict[str, Any] = {"vms": vms, "nodes": nodes}
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-scale-") as tmp:
        orchestrator = ("orchestrator", "--server", url, "--data-dir", tmp,
                        "--node-grace", str(NODE_GRACE_S))  # fmt: skip
        sim = await spawn_part("bench.simnode", "--server", url, "--prefix", prefix,
                               "--count", str(nodes), "--cpus", str(max(8, per_node)),
                               "--memory-bytes", str(2 * per_node * VM_MEMORY + (1 << 30)),
                               "--heartbeat-s", str(HEARTBEAT_S))  # fmt: skip
        orch = await spawn_part(*orchestrator)
        try:
            await until_api_answers(nc)
            await until_nodes_known(nc, {f"{prefix}-{k}" for k in range(nodes)})
            started = await measure(nc, run_id=run_id, vms=vms, concurrency=concurrency,
                                    rate=None)  # fmt: skip
            out.update(running=started["running"], starts_per_s=started["starts_per_s"],
                       events=started["events_per_vm"] * started["running"])  # fmt: skip
            names = [f"bench-{run_id}-vm-{i}" for i in range(vms)]
            out.update(await _steady(nc, orch.pid, steady_s=steady_s))
            out.update(await _reads(nc, url, names))
            await end_part(orch)
            t0 = time.perf_counter()
            orch = await spawn_part(*orchestrator)
            await until_api_answers(nc)
            out["restart_to_api_s"] = time.perf_counter() - t0
            # Acting again: a VM created now runs (the controller folded the whole log first).
            await send(nc, apply_command(f"bench-{run_id}-after-restart"), wait_s=60)
            await _until_running(nc, f"bench-{run_id}-after-restart")
            out["restart_to_acting_s"] = time.perf_counter() - t0
        finally:
            await end_part(orch)
            await end_part(sim)
    return out


async def _steady(nc: Client, pid: int, *, steady_s: float) -> dict[str, Any]:
    """RSS now, and the CPU the orchestrator spends while nothing changes but heartbeats: once
    the read model has folded the starts' last events (before that, the tail of the starts is
    what a short stretch would measure)."""
    end = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    for _ in range(600):  # the read model trails the log; it says how far it has come
        if (await query(nc, Query(what="nodes"))).position >= end:
            break
        await asyncio.sleep(0.1)
    rss = rss_bytes(pid)
    before, t0 = cpu_s(pid), time.perf_counter()
    await asyncio.sleep(steady_s)  # the quiet stretch itself is what is measured
    cpu = (cpu_s(pid) - before) / (time.perf_counter() - t0)
    return {"orchestrator_rss_bytes": rss, "steady_cpu_fraction": cpu}


async def _reads(nc: Client, url: str, names: list[str]) -> dict[str, Any]:
    rng = random.Random(7)
    lat = []
    for name in rng.sample(names, min(GETS, len(names))):
        t0 = time.perf_counter()
        answer = await query(nc, Query(namespace="default", name=name))
        lat.append((time.perf_counter() - t0) * 1e3)
        if not answer.vms:
            raise AssertionError(f"get vm {name}: not found")
    q = statistics.quantiles(lat, n=100, method="inclusive")
    lists = []
    for _ in range(3):
        t0 = time.perf_counter()
        every = await query(nc, Query(), wait_s=30)
        lists.append(time.perf_counter() - t0)
    cli = await _cli_list_s(url)
    t0 = time.perf_counter()
    found = await read_history(nc, Ref.vm(rng.choice(names)))
    return {
        "get_p50_ms": q[49], "get_p99_ms": q[98], "list_all_s": max(lists), "cli_list_s": cli,
        "listed": len(every.vms), "history_ms": (time.perf_counter() - t0) * 1e3,
        "history_events": len(found.events),
    }  # fmt: skip


async def _cli_list_s(url: str) -> float:
    """`virtbus get vms -A -o json` as a user runs it: a process, its start-up, every page, the
    JSON written out (to nowhere)."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "virtbus", "get", "vms", "-A", "-o", "json", "--server", url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"virtbus get vms -A -o json: {err.decode().strip()}")
    return time.perf_counter() - t0


async def _until_running(nc: Client, name: str, *, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        answer = await query(nc, Query(namespace="default", name=name))
        if answer.vms and answer.vms[0].status == "Running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} was not Running {within:g} s after the restart")
