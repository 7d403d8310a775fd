"""`virtbus bench migrate`: an orchestrated live migration against raw libvirt, same VM, same run.

Why: a migration through virtbus is a dozen events and two node work items around one libvirt
call; this measures what that costs a user, next to the call alone. Two real QEMU/KVM nodes
(`QemuNode`s, privileged libvirtds), a throw-away nats-server, the orchestrator as its own process
and a worker per node in this process. One small VM (the density test's: 1 core, 64Mi, a 16Mi
emptyDisk) starts on node A. Then, alternating in blocks of two hops (there and back, so the VM
ends each block where the log says it is):

- orchestrated: a `MigrateVM` published on the command stream (the bus contract), timed from the
  publish to its `MigrationSucceeded` reaching a follower of the log; downtime is the event's
  (libvirt's, from the target's completed job);
- raw: `migrateToURI3` on the same domain with the same flags and parameters the worker uses
  (LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE|UNSAFE, loopback, 64 MiB/s), timed around the call;
  downtime from the target's completed job stats. The workers ignore libvirt's "migrated" events,
  so these hops do not touch the log.

`ratio` is orchestrated p50 / raw p50 total time. Targets: ratio <= 1.2, downtime <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import libvirt
import nats
from nats.aio.client import Client

from bench.rig import publish, report, start_orchestrator, stop_orchestrator, vm_spec
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events import model as m
from events.errors import HypervisorError, VirtbusError
from events.names import EVENTS_STREAM
from events.work import MigrationPolicy
from workers.migration import migrate_flags, migrate_params
from workers.qemunodes import SAME_MACHINE, QemuNode, kvm_usable, qemu_available
from workers.worker import Worker

NODES: Final = {"bench-a": 30, "bench-b": 31}  # port ranges away from the test suite's
WAIT_S: Final = 90.0


def _say(msg: str) -> None:
    print(f"bench migrate: {msg}", file=sys.stderr, flush=True)


class _Follower:
    """One follower of the log: the outcome of each migration, when it arrived."""

    def __init__(self, nc: Client, *, prefix: str) -> None:
        self.store = EventStore(nc, source="/virtbus/bench/migrate")
        self.prefix = prefix
        self.running = asyncio.Event()
        self.outcomes: dict[str, tuple[float, m.Event]] = {}
        self.changed = asyncio.Event()

    async def follow(self, from_seq: int) -> None:
        async for rec in self.store.follow(from_seq=from_seq):
            if not rec.subject.startswith(self.prefix):
                continue
            e = rec.envelope.data
            if isinstance(e, m.DomainStarted):
                self.running.set()
            elif isinstance(e, m.MigrationSucceeded | m.MigrationFailed):
                self.outcomes[e.migration] = (time.perf_counter(), e)
                self.changed.set()
            elif isinstance(e, m.CommandRejected):
                self.outcomes[e.command_id] = (time.perf_counter(), e)
                self.changed.set()

    async def outcome(self, migration: str) -> tuple[float, m.Event]:
        deadline = time.monotonic() + WAIT_S
        while migration not in self.outcomes:
            self.changed.clear()
            if (left := deadline - time.monotonic()) <= 0:
                raise VirtbusError(f"migration {migration}: no outcome within {WAIT_S:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return self.outcomes[migration]


async def _orchestrated_hop(
    nc: Client, log: _Follower, *, vm: str, to: str, n: int
) -> dict[str, float]:
    mig = f"{vm}-hop-{n}"
    t0 = time.perf_counter()
    await publish(nc, c.MigrateVM(id=mig, name=vm, target_node=to, migration=mig, actor="bench"))
    at, e = await log.outcome(mig)
    if not isinstance(e, m.MigrationSucceeded):
        raise VirtbusError(f"orchestrated hop {n} to {to}: {e}")
    return {"total_ms": (at - t0) * 1e3, "downtime_ms": e.downtime_ms}


def _raw_hop(src_uri: str, dst_uri: str, domain: str, policy: MigrationPolicy) -> dict[str, float]:
    src, dst = libvirt.open(src_uri), libvirt.open(dst_uri)
    try:
        dom = src.lookupByName(domain)
        with contextlib.suppress(libvirt.libvirtError):
            dom.migrateSetMaxDowntime(policy.max_downtime_ms, 0)
        t0 = time.perf_counter()
        dom.migrateToURI3(
            dst_uri, migrate_params(SAME_MACHINE, policy), migrate_flags(SAME_MACHINE, policy)
        )
        total = (time.perf_counter() - t0) * 1e3
        stats = dst.lookupByName(domain).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return {"total_ms": total, "downtime_ms": float(stats.get("downtime", 0))}
    finally:
        src.close()
        dst.close()


_STAGES: Final = (
    ("intake+schedule", m.MigrationRequested, m.MigrationScheduled),
    ("target launcher", m.MigrationScheduled, m.MigrationTargetReady),
    ("to the source", m.MigrationTargetReady, m.MigrationStarted),
    ("libvirt migration", m.MigrationStarted, m.MigrationSucceeded),
)


async def _stages(store: EventStore, vm: str, hops: set[str]) -> dict[str, float]:
    """p50 ms of each stage of the orchestrated hops, from the events' own times."""
    at: dict[tuple[str, type[m.Event]], float] = {}
    for rec in await store.read(c.StartVM(name=vm).target):
        e = rec.envelope.data
        if (mig := str(getattr(e, "migration", ""))) in hops:
            at.setdefault((mig, type(e)), rec.envelope.time.timestamp())
    return {
        name: statistics.median([(at[(h, b)] - at[(h, a)]) * 1e3 for h in hops
                                 if (h, a) in at and (h, b) in at] or [0.0])
        for name, a, b in _STAGES
    }  # fmt: skip


def _summary(hops: list[dict[str, float]]) -> dict[str, float]:
    totals, downs = [h["total_ms"] for h in hops], [h["downtime_ms"] for h in hops]
    return {
        "total_p50_ms": statistics.median(totals), "total_max_ms": max(totals),
        "downtime_p50_ms": statistics.median(downs), "downtime_max_ms": max(downs),
    }  # fmt: skip


async def run(*, rounds: int) -> dict[str, Any]:
    """Run the benchmark on a fresh stack; everything it started is gone when it returns."""
    for ok, why in (qemu_available(), kvm_usable()):
        if not ok:
            raise HypervisorError(f"bench migrate needs real QEMU/KVM nodes: {why}")
    with tempfile.TemporaryDirectory(prefix="vbm-") as tmp:  # short: unix sockets live in it
        base = Path(tmp)
        async with NatsServer(data_dir=base / "nats", port=-1) as server:
            orch = await start_orchestrator(server.url, base / "orch")
            nodes = [QemuNode(base, name, index=i) for name, i in NODES.items()]
            try:
                for node in nodes:
                    await node.start()
                return await _with_nodes(server.url, base, nodes, rounds=rounds)
            finally:
                for node in nodes:
                    await node.stop()
                await stop_orchestrator(orch)


async def _with_nodes(url: str, base: Path, nodes: list[QemuNode], *, rounds: int
                      ) -> dict[str, Any]:  # fmt: skip
    nc = await nats.connect(url, name="virtbus-bench-client")
    worker_nc = await nats.connect(url, name="virtbus-bench-workers")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    follower: asyncio.Task[None] | None = None
    try:
        await provision(nc.jetstream())
        for node in nodes:
            data = base / "data" / node.name
            worker = Worker(worker_nc, node=node.name, uri=node.uri, data_dir=data,
                            host_root=data / "host", migration=node.migration)  # fmt: skip
            tasks.append(asyncio.create_task(worker.run(stop), name=f"bench-worker-{node.name}"))
        vm = f"mig-{uuid.uuid4().hex[:6]}"
        log = _Follower(nc, prefix=f"virt.vm.default.{vm}.")
        first = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq + 1
        follower = asyncio.create_task(log.follow(first), name="bench-migrate-follow")
        await asyncio.sleep(1)  # the workers register
        await publish(nc, c.ApplyVM(id=f"{vm}-apply", name=vm, spec=vm_spec(), actor="bench"))
        await asyncio.wait_for(log.running.wait(), WAIT_S)
        s, _ = await VMRepository(log.store).get(c.StartVM(name=vm).target)
        home, away = s.node, next(n.name for n in nodes if n.name != s.node)
        uri = {n.name: n.uri for n in nodes}
        _say(f"{vm} Running on {home}; warm-up hop there and back")
        await _orchestrated_hop(nc, log, vm=vm, to=away, n=0)
        await _orchestrated_hop(nc, log, vm=vm, to=home, n=1)
        orchestrated: list[dict[str, float]] = []
        timed: set[str] = set()
        raw: list[dict[str, float]] = []
        dom, policy = f"default_{vm}", MigrationPolicy()
        for r in range(max(1, rounds // 2)):
            for i, to in enumerate((away, home)):
                n = 2 + 2 * r + i
                orchestrated.append(await _orchestrated_hop(nc, log, vm=vm, to=to, n=n))
                timed.add(f"{vm}-hop-{n}")
            for src, dst in ((home, away), (away, home)):
                raw.append(await asyncio.to_thread(_raw_hop, uri[src], uri[dst], dom, policy))
            _say(f"round {r + 1}: virtbus {orchestrated[-1]['total_ms']:.0f} ms, "
                 f"raw {raw[-1]['total_ms']:.0f} ms")  # fmt: skip
        stages = await _stages(log.store, vm, timed)
    finally:
        stop.set()
        if follower is not None:
            follower.cancel()
        await asyncio.gather(*tasks, *([follower] if follower else []), return_exceptions=True)
        await worker_nc.close()
        await nc.close()
    o, w = _summary(orchestrated), _summary(raw)
    return {
        "hops": len(orchestrated), "vm_memory": "64Mi",
        "bandwidth_mib_s": policy.bandwidth_bytes >> 20,
        "orchestrated": o, "raw": w,
        "ratio": o["total_p50_ms"] / w["total_p50_ms"], "stages_p50_ms": stages,
        "orchestrated_hops": orchestrated, "raw_hops": raw,
    }  # fmt: skip


def _table(r: dict[str, Any]) -> str:
    o, w = r["orchestrated"], r["raw"]
    return "\n".join([
        f"{r['hops']} live migrations each way of a {r['vm_memory']} VM between two QEMU/KVM nodes",
        f"{'':26} {'total p50':>10} {'total max':>10} {'downtime p50':>13} {'downtime max':>13}",
        f"{'virtbus (MigrateVM)':26} {o['total_p50_ms']:8.0f}ms {o['total_max_ms']:8.0f}ms"
        f" {o['downtime_p50_ms']:11.0f}ms {o['downtime_max_ms']:11.0f}ms",
        f"{'raw libvirt migrateToURI3':26} {w['total_p50_ms']:8.0f}ms {w['total_max_ms']:8.0f}ms"
        f" {w['downtime_p50_ms']:11.0f}ms {w['downtime_max_ms']:11.0f}ms",
        f"ratio (total p50)            {r['ratio']:.2f}   (target <= 1.2; downtime <= 100 ms)",
        "where virtbus's time goes (p50 ms, from the events' times):",
        *(f"  {k:20} {v:8.0f}" for k, v in r["stages_p50_ms"].items()),
    ])  # fmt: skip


def measure(*, rounds: int, output: str) -> int:
    """Run the benchmark and print its report."""
    return report(run(rounds=rounds + rounds % 2), output=output, table=_table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.migrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=6, help="hops per mode (rounded up to even)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return measure(rounds=args.rounds, output=args.output)


if __name__ == "__main__":
    sys.exit(main())
