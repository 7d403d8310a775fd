"""`virtbus bench start`: KubeVirt's density protocol, creation to Running on a real node.

Why: `bench control` measures the control plane against simulated nodes; this one asks what a user
waits for on a real hypervisor, and what virtbus adds on top of libvirt itself. N small VMs
(runStrategy Always, 1 core, 64Mi, q35, one 16Mi emptyDisk, no VNC) are created 100 ms apart, like
KubeVirt's density test, and each one's creation->Running is timed: from just before its `ApplyVM`
is published to `virt.cmd.vm.default.<name>.ApplyVM` (a plain JetStream publish, the bus contract)
to its first `DomainStarted` reaching one follower of the log.

Everything real runs: a throw-away nats-server, the orchestrator as its own process
(`python -m orchestrator`), and one node worker in this process on either the libvirt test driver
or a `QemuNode` (a privileged libvirtd with real QEMU/KVM guests). The node advertises enough vCPUs
for the N VMs (the scheduler's 10:1 overcommit would cap a 2-core node at 20 one-core VMs); the
guests have no OS and idle in firmware. One untimed warm-up VM first proves the path is live.

Baseline, same run, same node, before the orchestrated VMs: the same N domains with raw
libvirt-python (`start_baseline.py`). `ratio_p50` and `ratio_p95` are orchestrated / raw. The
orchestrated VMs are left running; the teardown destroys them.

This module is the scenario, the node rig and the report; the worker's libvirt and launcher calls
are timed in passing (`start_timing.py`: subclasses of its hypervisor and pod driver, nothing
changed in the worker), so the report can say where the time goes; the nats-server and
orchestrator come from `rig.py`, shared with `bench migrate`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import nats
from nats.aio.client import Client

from bench.rig import publish, report, start_orchestrator, stop_orchestrator, vm_spec
from bench.start_baseline import raw_baseline
from bench.start_boot import boot_phase
from bench.start_timing import (
    STAGES,
    Follower,
    Marks,
    SizedHypervisor,
    TimedPods,
    mark,
    paced,
    percentiles,
)
from bus.provision import provision
from bus.server import NatsServer
from events import commands as c
from events.errors import HypervisorError, VirtbusError
from events.names import EVENTS_STREAM
from virtbus.guest.build import GuestBuildError, guest_image
from workers.accel import accelerator
from workers.node import libvirt_test_uri
from workers.pods import ProcessPods
from workers.qemunodes import QemuNode, kvm_usable, qemu_available
from workers.worker import Worker

NODE: Final = "bench-node"
NODE_INDEX: Final = 13  # its own port ranges, away from the test suite's nodes (0..2, 7)
CPU_ALLOCATION_RATIO: Final = 10  # the scheduler's vCPU overcommit (orchestrator/scheduler.py)
READY_WAIT_S: Final = 90.0  # orchestrator up, node known, warm-up VM Running


def _say(msg: str) -> None:
    """Progress, on stderr: stdout holds the result only."""
    print(f"bench start: {msg}", file=sys.stderr, flush=True)


# --- the orchestrated run ------------------------------------------------------------------------


async def _warm_up(nc: Client, log: Follower, *, run_id: str) -> None:
    """One untimed VM: the orchestrator answers, the controller knows the node, QEMU is paged in."""
    warm = f"bench-{run_id}-warmup"
    await publish(nc, c.ApplyVM(id=f"{warm}-apply", name=warm, spec=vm_spec(), actor="bench"))
    if not await log.until([warm], "running", within=READY_WAIT_S):
        why = log.failures.get(warm, "no DomainStarted")
        raise VirtbusError(f"warm-up VM not Running within {READY_WAIT_S:.0f}s: {why}")


async def _orchestrated(
    nc: Client, log: Follower, *, run_id: str, vms: int, interval_s: float
) -> dict[str, Any]:
    spec = vm_spec()
    names = [f"bench-{run_id}-vm-{i}" for i in range(vms)]

    async def create(i: int) -> None:
        cmd = c.ApplyVM(id=f"{names[i]}-apply", name=names[i], spec=spec, actor="bench")
        mark(log.marks, names[i], "publish")
        await publish(nc, cmd)

    t0 = time.perf_counter()
    await paced(vms, interval_s, create)
    await log.until(names, "running", within=60 + vms * 1.0)
    running = [n for n in names if "running" in log.marks.get(n, {})]
    wall = max((log.marks[n]["running"] for n in running), default=t0) - t0
    # Left running: the teardown destroys them (QemuNode.stop, or the test driver's connection).
    lat = [(log.marks[n]["running"] - log.marks[n]["publish"]) * 1e3 for n in running]
    stages = {}
    for stage, a, b in STAGES:
        spans = [
            (log.marks[n][b] - log.marks[n][a]) * 1e3
            for n in running
            if a in log.marks[n] and b in log.marks[n]
        ]
        stages[stage] = percentiles(spans)
    return {
        "running": len(running),
        "failed": {n: log.failures[n] for n in names if n in log.failures and n not in running},
        "latency": percentiles(lat),
        "wall_s": wall,
        "stages_ms": stages,
    }


# --- the stack -----------------------------------------------------------------------------------


async def run(
    *, vms: int, hypervisor: str, interval_ms: float = 100, boots: int = 0
) -> dict[str, Any]:
    """Run the benchmark on a fresh stack; everything it started is gone when it returns."""
    if hypervisor == "qemu" and not (ready := qemu_available())[0]:
        raise HypervisorError(f"--hypervisor qemu: {ready[1]}")
    run_id = uuid.uuid4().hex[:6]
    interval_s = interval_ms / 1e3
    with tempfile.TemporaryDirectory(prefix="vbs-") as tmp:  # short: a unix socket lives in it
        base = Path(tmp)
        async with NatsServer(data_dir=base / "nats", port=-1) as server:
            orch = await start_orchestrator(server.url, base / "orch")
            try:
                return await _with_bus(
                    server.url, base, run_id=run_id, vms=vms, hypervisor=hypervisor,
                    interval_s=interval_s, boots=boots,
                )  # fmt: skip
            except BaseException:
                tail = (base / "orch" / "orchestrator.log").read_text(errors="replace")
                print("orchestrator log (tail):", *tail.splitlines()[-10:], sep="\n  ",
                      file=sys.stderr)  # fmt: skip
                raise
            finally:
                await stop_orchestrator(orch)


async def _with_bus(
    url: str, base: Path, *, run_id: str, vms: int, hypervisor: str, interval_s: float,
    boots: int,
) -> dict[str, Any]:  # fmt: skip
    node: QemuNode | None = None
    worker_nc = await nats.connect(url, name="virtbus-bench-worker")
    nc = await nats.connect(url, name="virtbus-bench-client")
    try:
        await provision(nc.jetstream())
        data_dir = base / "node"
        if hypervisor == "qemu":
            node = QemuNode(base, NODE, index=NODE_INDEX)
            await node.start()
            uri = node.uri
            kvm = kvm_usable()[0] and accelerator()[0] == "kvm"  # what the node's domains use
        else:
            gib = max(16, -(-(vms + 1) * 2 * 64 // 1024) + 1)
            uri = await asyncio.to_thread(libvirt_test_uri, data_dir, memory_gib=gib)
            kvm = False
        return await _with_node(
            worker_nc, nc, uri=uri, data_dir=data_dir, run_id=run_id, vms=vms,
            interval_s=interval_s, hypervisor=hypervisor, kvm=kvm,
            boots=boots if hypervisor == "qemu" else 0,
        )  # fmt: skip
    finally:
        try:
            if node is not None:
                await node.stop()
        finally:
            await nc.close()
            await worker_nc.close()


async def _with_node(
    worker_nc: Client, nc: Client, *, uri: str, data_dir: Path, run_id: str, vms: int,
    interval_s: float, hypervisor: str, kvm: bool, boots: int,
) -> dict[str, Any]:  # fmt: skip
    marks: Marks = {}
    boot: dict[str, Any] = {}
    cpus = -(-(vms + 1) // CPU_ALLOCATION_RATIO) + 1
    worker = Worker(worker_nc, node=NODE, uri=uri, data_dir=data_dir, host_root=data_dir / "host",
                    hypervisor=SizedHypervisor(uri, cpus=cpus, marks=marks))  # fmt: skip
    if isinstance(worker.launchers.driver, ProcessPods):
        worker.launchers.driver = TimedPods(worker.launchers.driver, marks=marks)
    log = Follower(nc, prefix=f"virt.vm.default.bench-{run_id}-", marks=marks)
    first_seq = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq + 1
    follower = asyncio.create_task(log.follow(first_seq), name="bench-start-follow")
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop), name=f"bench-start-worker-{NODE}")
    try:
        await _warm_up(nc, log, run_id=run_id)
        if boots:
            boot = await _boots(nc, log, uri=uri, data_dir=data_dir, run_id=run_id, boots=boots,
                                kvm=kvm)  # fmt: skip
        _say(f"warm-up VM Running; raw libvirt baseline, {vms} domains")
        raw = await raw_baseline(uri, run_id=run_id, vms=vms, interval_s=interval_s, kvm=kvm,
                         work=data_dir / "raw")  # fmt: skip
        _say(
            f"raw: {raw['running']}/{vms} started, p50 {raw['latency']['p50']:.0f} ms; virtbus run"
        )
        orchestrated = await _orchestrated(nc, log, run_id=run_id, vms=vms, interval_s=interval_s)
        _say(f"virtbus: {orchestrated['running']}/{vms} Running; tearing down")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await _stop_worker(worker_task, stop)
    if worker_task.done() and not worker_task.cancelled() and worker_task.exception():
        raise VirtbusError(f"the node worker failed: {worker_task.exception()!r}")
    o, r = orchestrated["latency"], raw["latency"]
    return {
        "vms": vms,
        "hypervisor": hypervisor,
        "kvm": kvm,
        "interval_ms": interval_s * 1e3,
        "node_cpus_advertised": cpus,
        "running": orchestrated["running"],
        "failed": orchestrated["failed"],
        "create_to_running_p50_ms": o["p50"],
        "create_to_running_p95_ms": o["p95"],
        "create_to_running_max_ms": o["max"],
        "orchestrated_wall_s": orchestrated["wall_s"],
        "stages_ms": orchestrated["stages_ms"],
        "raw_running": raw["running"],
        "raw_errors": raw["errors"],
        "raw_p50_ms": r["p50"],
        "raw_p95_ms": r["p95"],
        "raw_max_ms": r["max"],
        "raw_wall_s": raw["wall_s"],
        "ratio_p50": o["p50"] / r["p50"] if r["p50"] else 0.0,
        "ratio_p95": o["p95"] / r["p95"] if r["p95"] else 0.0,
        **boot,
    }


async def _boots(
    nc: Client, log: Follower, *, uri: str, data_dir: Path, run_id: str, boots: int, kvm: bool
) -> dict[str, Any]:
    """The boot phase (`start_boot.py`), or nothing, said why, where the guest cannot be built."""
    try:
        image = await asyncio.to_thread(guest_image)
    except GuestBuildError as err:
        _say(f"no boot phase: the tiny guest cannot be built here ({err})")
        return {}
    _say(f"boot phase: the tiny guest, {boots} boots each way")
    r = await boot_phase(nc, log, uri=uri, image=image, data_dir=data_dir, run_id=run_id,
                         boots=boots, kvm=kvm)  # fmt: skip
    _say(f"boots: virtbus p50 {r['boot_p50_ms']:.0f} ms, raw p50 {r['raw_boot_p50_ms']:.0f} ms")
    return r


async def _stop_worker(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Stop the worker; cancel again what swallowed its first cancellation.

    On Python 3.11 `asyncio.wait_for` (inside nats-py's requests) can lose a cancellation that
    races the reply (gh-86296, fixed in 3.12): the worker's libvirt-event task, busy reading a
    VM's history for QEMU's "resumed" event as the worker stops, then waits for the next event
    forever and the worker never ends. Let those events settle first, then re-cancel stragglers.
    """
    await asyncio.sleep(0.5)
    stop.set()
    for _ in range(12):
        done, _ = await asyncio.wait({task}, timeout=5)
        if done:
            return
        for t in asyncio.all_tasks():
            if t.get_name().startswith(f"worker-{NODE}-") and t.cancelling() and not t.done():
                t.cancel()
    task.cancel()  # a minute is plenty: give up on its clean end
    await asyncio.gather(task, return_exceptions=True)


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['running']}/{r['vms']} VMs Running on one {r['hypervisor']} node"
        f" (kvm {r['kvm']}), created {r['interval_ms']:.0f} ms apart",
        f"{'':28} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}",
        f"{'virtbus creation->Running':28} {r['create_to_running_p50_ms']:9.0f}"
        f" {r['create_to_running_p95_ms']:9.0f} {r['create_to_running_max_ms']:9.0f}",
        f"{'raw libvirt define+create':28} {r['raw_p50_ms']:9.0f} {r['raw_p95_ms']:9.0f}"
        f" {r['raw_max_ms']:9.0f}",
        f"{'ratio':28} {r['ratio_p50']:9.2f} {r['ratio_p95']:9.2f}",
        "where virtbus's time goes (p50 / p95 ms):",
    ]
    lines += [f"  {k:12} {v['p50']:8.0f} {v['p95']:8.0f}" for k, v in r["stages_ms"].items()]
    if "boots" in r:
        lines += [
            f"tiny guest creation->booted (agent connected), {r['boots']} each, p50 / max ms:",
            f"  {'virtbus':26} {r['boot_p50_ms']:9.0f} {r['boot_max_ms']:9.0f}",
            f"  {'raw libvirt define+create':26} {r['raw_boot_p50_ms']:9.0f}"
            f" {r['raw_boot_max_ms']:9.0f}",
            f"  {'ratio':26} {r['boot_ratio_p50']:9.2f}",
        ]
    for vm, why in list(r["failed"].items())[:5]:
        lines.append(f"failed: {vm}: {why}")
    return "\n".join(lines)


def measure(*, vms: int, hypervisor: str, interval_ms: float, output: str, boots: int = 3) -> int:
    """Run the benchmark and print its report; 1 when a VM did not reach Running."""

    def shortfall(r: dict[str, Any]) -> str:
        if r["running"] < vms or r["raw_running"] < vms:
            return f"{vms - r['running']} VMs did not reach Running ({vms - r['raw_running']} raw)"
        return ""

    bench = run(vms=vms, hypervisor=hypervisor, interval_ms=interval_ms, boots=boots)
    return report(bench, output=output, table=_table, shortfall=shortfall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vms", type=int, default=100, help="VMs to create")
    parser.add_argument("--hypervisor", choices=["qemu", "test"], default="qemu")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="between creations")
    parser.add_argument("--boots", type=int, default=3, help="tiny-guest boots each way (qemu)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    if args.vms < 1 or args.interval_ms < 0:
        parser.error("--vms must be at least 1 and --interval-ms not negative")
    return measure(vms=args.vms, hypervisor=args.hypervisor, interval_ms=args.interval_ms,
                   output=args.output, boots=args.boots)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
