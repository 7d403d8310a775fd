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

Baseline, same run, same node, before the orchestrated VMs (after the warm-up VM, so both runs see
the same node: libvirtd up, QEMU paged in, one guest running): raw libvirt-python. The same N
domains (the XML the worker renders, via `render_domain` with the same spec and volumes) are
`defineXML` + `create()`d 100 ms apart, each in a thread of a pool as large as the worker's
libvirt pool (`LIBVIRT_THREADS`) so they overlap like the orchestrated starts; each is timed from
the call to `defineXML` to `create()` returning; then destroyed and undefined. `ratio_p50` and
`ratio_p95` are orchestrated / raw. The orchestrated VMs are left running; the teardown destroys
them.

The worker's libvirt and launcher calls are timed in passing (subclasses of its hypervisor and pod
driver, nothing changed in the worker), so the report can say where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import libvirt
import msgspec
import nats
import uvloop
from nats.aio.client import Client

from bus.provision import provision
from bus.server import NatsServer, die_with_parent
from bus.store import EventStore
from events import commands as c
from events import model as m
from events.envelope import encode
from events.errors import HypervisorError, VirtbusError
from events.names import EVENTS_STREAM
from workers import hypervisor as hv
from workers.domain import render_domain
from workers.node import libvirt_test_uri
from workers.pods import ProcessPods
from workers.qemunodes import QemuNode, kvm_usable, qemu_available
from workers.volumes import Volumes
from workers.worker import Worker

NODE: Final = "bench-node"
NODE_INDEX: Final = 13  # its own port ranges, away from the test suite's nodes (0..2, 7)
CPU_ALLOCATION_RATIO: Final = 10  # the scheduler's vCPU overcommit (orchestrator/scheduler.py)
READY_WAIT_S: Final = 90.0  # orchestrator up, node known, warm-up VM Running
# Segments of creation->Running, in order, from the marks taken along the way.
STAGES: Final = (
    ("intake", "publish", "created"),  # ApplyVM judged: VMCreated on the log
    ("schedule", "created", "scheduled"),  # the controller placed it: VMScheduled
    ("to_worker", "scheduled", "pod_begin"),  # work item fetched, history read, volume made
    ("launcher", "pod_begin", "pod_end"),  # the launcher process started
    ("define", "define_begin", "define_end"),  # libvirt defineXML
    ("create", "start_begin", "start_end"),  # libvirt create(): QEMU up, CPUs running
    ("report", "start_end", "running"),  # DomainStarted appended and seen by the follower
)

Marks = dict[str, dict[str, float]]


def vm_spec() -> dict[str, Any]:
    """The small VM of the density test, as a KubeVirt VirtualMachine spec."""
    return {
        "runStrategy": "Always",
        "template": {
            "spec": {
                "domain": {
                    "cpu": {"cores": 1},
                    "memory": {"guest": "64Mi"},
                    "machine": {"type": "q35"},
                    "devices": {
                        "disks": [{"name": "scratch", "disk": {"bus": "virtio"}}],
                        # 100 guests would not fit a node's 64 VNC ports; nobody watches them.
                        "autoattachGraphicsDevice": False,
                    },
                },
                "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "16Mi"}}],
            }
        },
    }


def _say(msg: str) -> None:
    """Progress, on stderr: stdout holds the result only."""
    print(f"bench start: {msg}", file=sys.stderr, flush=True)


def _mark(marks: Marks, vm: str, key: str) -> None:
    marks.setdefault(vm, {}).setdefault(key, time.perf_counter())


class _SizedHypervisor(hv.Hypervisor):
    """The worker's hypervisor, advertising at least `cpus` and timing define and create."""

    def __init__(self, uri: str, *, cpus: int, marks: Marks) -> None:
        super().__init__(uri)
        self.cpus = cpus
        self.marks = marks

    async def host(self) -> hv.HostInfo:
        info = await super().host()
        return msgspec.structs.replace(info, cpus=max(info.cpus, self.cpus))

    async def define(self, xml: str) -> str:
        found = re.search(r"<name>[^_<]*_([^<]+)</name>", xml)
        vm = found[1] if found else ""
        _mark(self.marks, vm, "define_begin")
        try:
            return await super().define(xml)
        finally:
            _mark(self.marks, vm, "define_end")

    async def start(self, name: str) -> None:
        vm = name.partition("_")[2]
        _mark(self.marks, vm, "start_begin")
        try:
            await super().start(name)
        finally:
            _mark(self.marks, vm, "start_end")


class _TimedPods(ProcessPods):
    """The worker's launcher driver, timing each launcher's start."""

    def __init__(self, pods: ProcessPods, *, marks: Marks) -> None:
        super().__init__(pods.on_exit)
        self.marks = marks

    async def create(self, pod: str, *, namespace: str = "default") -> str:
        vm = pod.removeprefix("virt-launcher-").rpartition("-")[0]
        _mark(self.marks, vm, "pod_begin")
        try:
            return await super().create(pod, namespace=namespace)
        finally:
            _mark(self.marks, vm, "pod_end")


class _Log:
    """One follower of the log: per VM, when each event of interest first arrived."""

    def __init__(self, nc: Client, *, prefix: str, marks: Marks) -> None:
        self.store = EventStore(nc, source="/virtbus/bench/start")
        self.prefix = prefix
        self.marks = marks
        self.failures: dict[str, str] = {}
        self.changed = asyncio.Event()

    async def follow(self, from_seq: int) -> None:
        keys: dict[type[m.Event], str] = {
            m.VMCreated: "created", m.VMScheduled: "scheduled", m.DomainStarted: "running",
        }  # fmt: skip
        async for rec in self.store.follow(from_seq=from_seq):
            if not rec.subject.startswith(self.prefix):
                continue
            vm = rec.subject.split(".")[3]
            data = rec.envelope.data
            if (key := keys.get(type(data))) is not None:
                _mark(self.marks, vm, key)
            elif isinstance(data, m.VMStartFailed | m.CommandRejected | m.VMUnschedulable):
                self.failures.setdefault(vm, f"{type(data).__name__}: {data}")
            else:
                continue
            self.changed.set()

    def count(self, names: list[str], key: str) -> int:
        return sum(1 for n in names if key in self.marks.get(n, {}))

    async def until(self, names: list[str], key: str, *, within: float) -> bool:
        """Whether every VM of `names` got `key` within `within` seconds."""
        deadline = time.monotonic() + within
        while self.count(names, key) < len(names):
            if (left := deadline - time.monotonic()) <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "max": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "max": max(values)}


async def _publish(nc: Client, cmd: c.Command) -> None:
    # A generous ack wait: a node saturated by its guests slows the server too (nats-py: 0.5 s).
    subject = cmd.target.command_subject(type(cmd).__name__)
    await nc.jetstream().publish(subject, encode(cmd), timeout=10)


async def _paced(n: int, interval_s: float, job: Callable[[int], Awaitable[None]]) -> None:
    """Run job(0..n-1) one after another, each starting at t0 + i * interval (no drift)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(n):
        if (delay := t0 + i * interval_s - loop.time()) > 0:
            await asyncio.sleep(delay)
        await job(i)


# --- the orchestrated run ------------------------------------------------------------------------


async def _warm_up(nc: Client, log: _Log, *, run_id: str) -> None:
    """One untimed VM: the orchestrator answers, the controller knows the node, QEMU is paged in."""
    warm = f"bench-{run_id}-warmup"
    await _publish(nc, c.ApplyVM(id=f"{warm}-apply", name=warm, spec=vm_spec(), actor="bench"))
    if not await log.until([warm], "running", within=READY_WAIT_S):
        why = log.failures.get(warm, "no DomainStarted")
        raise VirtbusError(f"warm-up VM not Running within {READY_WAIT_S:.0f}s: {why}")


async def _orchestrated(
    nc: Client, log: _Log, *, run_id: str, vms: int, interval_s: float
) -> dict[str, Any]:
    spec = vm_spec()
    names = [f"bench-{run_id}-vm-{i}" for i in range(vms)]

    async def create(i: int) -> None:
        cmd = c.ApplyVM(id=f"{names[i]}-apply", name=names[i], spec=spec, actor="bench")
        _mark(log.marks, names[i], "publish")
        await _publish(nc, cmd)

    t0 = time.perf_counter()
    await _paced(vms, interval_s, create)
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
        stages[stage] = _pct(spans)
    return {
        "running": len(running),
        "failed": {n: log.failures[n] for n in names if n in log.failures and n not in running},
        "latency": _pct(lat),
        "wall_s": wall,
        "stages_ms": stages,
    }


# --- the raw libvirt baseline ---------------------------------------------------------------------


def _define_and_create(conn: Any, xml: str) -> None:
    dom = conn.defineXML(xml)
    dom.create()


def _destroy_and_undefine(conn: Any, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()


async def _raw(uri: str, *, run_id: str, vms: int, interval_s: float, kvm: bool, work: Path) -> (
    dict[str, Any]
):  # fmt: skip
    spec = vm_spec()
    volumes = Volumes(work)
    doms: list[tuple[str, str]] = []  # (domain name, xml); [0] is the untimed warm-up
    for i in range(vms + 1):
        vm, uid = f"raw-{i}", str(uuid.uuid4())
        resolved = await volumes.resolve(spec, namespace="default", name=vm, uid=uid)
        xml = render_domain(spec, name=vm, namespace="default", uid=uid, volumes=resolved, kvm=kvm)
        # The worker's naming is namespace_name; a name without "_" is no VM of its (it ignores it).
        dom = f"bench-raw-{run_id}-{i}"
        doms.append((dom, xml.replace(f"<name>default_{vm}</name>", f"<name>{dom}</name>", 1)))
    pool = ThreadPoolExecutor(hv.LIBVIRT_THREADS, thread_name_prefix="bench-raw-libvirt")
    loop = asyncio.get_running_loop()
    conn = await loop.run_in_executor(pool, libvirt.open, uri)
    lat: list[float] = []
    errors: list[str] = []
    try:
        await loop.run_in_executor(pool, _define_and_create, conn, doms[0][1])

        async def one(i: int) -> None:
            t = time.perf_counter()
            try:
                await loop.run_in_executor(pool, _define_and_create, conn, doms[i + 1][1])
            except libvirt.libvirtError as err:
                errors.append(str(err))
                return
            lat.append((time.perf_counter() - t) * 1e3)

        tasks: list[asyncio.Task[None]] = []

        async def spawn(i: int) -> None:
            tasks.append(asyncio.create_task(one(i), name=f"bench-start-raw-{i}"))

        t0 = time.perf_counter()
        try:
            await _paced(vms, interval_s, spawn)
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(
            *(loop.run_in_executor(pool, _destroy_and_undefine, conn, d) for d, _ in doms),
            return_exceptions=True,
        )
        await loop.run_in_executor(pool, conn.close)
        pool.shutdown(wait=False)
        await asyncio.to_thread(shutil.rmtree, work, True)
    return {"running": len(lat), "errors": errors[:3], "latency": _pct(lat), "wall_s": wall}


# --- the stack -----------------------------------------------------------------------------------


async def _start_orchestrator(url: str, data_dir: Path) -> asyncio.subprocess.Process:
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    with (data_dir / "orchestrator.log").open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "--server", url, "--data-dir", str(data_dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=die_with_parent,
        )  # fmt: skip


async def _stop_orchestrator(proc: asyncio.subprocess.Process, *, grace: float = 20) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


async def run(*, vms: int, hypervisor: str, interval_ms: float = 100) -> dict[str, Any]:
    """Run the benchmark on a fresh stack; everything it started is gone when it returns."""
    if hypervisor == "qemu" and not (ready := qemu_available())[0]:
        raise HypervisorError(f"--hypervisor qemu: {ready[1]}")
    run_id = uuid.uuid4().hex[:6]
    interval_s = interval_ms / 1e3
    with tempfile.TemporaryDirectory(prefix="vbs-") as tmp:  # short: a unix socket lives in it
        base = Path(tmp)
        async with NatsServer(data_dir=base / "nats", port=-1) as server:
            orch = await _start_orchestrator(server.url, base / "orch")
            try:
                return await _with_bus(
                    server.url, base, run_id=run_id, vms=vms, hypervisor=hypervisor,
                    interval_s=interval_s,
                )  # fmt: skip
            except BaseException:
                tail = (base / "orch" / "orchestrator.log").read_text(errors="replace")
                print("orchestrator log (tail):", *tail.splitlines()[-10:], sep="\n  ",
                      file=sys.stderr)  # fmt: skip
                raise
            finally:
                await _stop_orchestrator(orch)


async def _with_bus(
    url: str, base: Path, *, run_id: str, vms: int, hypervisor: str, interval_s: float
) -> dict[str, Any]:
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
            kvm = kvm_usable()[0]
        else:
            gib = max(16, -(-(vms + 1) * 2 * 64 // 1024) + 1)
            uri = await asyncio.to_thread(libvirt_test_uri, data_dir, memory_gib=gib)
            kvm = False
        return await _with_node(
            worker_nc, nc, uri=uri, data_dir=data_dir, run_id=run_id, vms=vms,
            interval_s=interval_s, hypervisor=hypervisor, kvm=kvm,
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
    interval_s: float, hypervisor: str, kvm: bool,
) -> dict[str, Any]:  # fmt: skip
    marks: Marks = {}
    cpus = -(-(vms + 1) // CPU_ALLOCATION_RATIO) + 1
    worker = Worker(worker_nc, node=NODE, uri=uri, data_dir=data_dir, host_root=data_dir / "host",
                    hypervisor=_SizedHypervisor(uri, cpus=cpus, marks=marks))  # fmt: skip
    if isinstance(worker.launchers.driver, ProcessPods):
        worker.launchers.driver = _TimedPods(worker.launchers.driver, marks=marks)
    log = _Log(nc, prefix=f"virt.vm.default.bench-{run_id}-", marks=marks)
    first_seq = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq + 1
    follower = asyncio.create_task(log.follow(first_seq), name="bench-start-follow")
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop), name=f"bench-start-worker-{NODE}")
    try:
        await _warm_up(nc, log, run_id=run_id)
        _say(f"warm-up VM Running; raw libvirt baseline, {vms} domains")
        raw = await _raw(uri, run_id=run_id, vms=vms, interval_s=interval_s, kvm=kvm,
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
    }


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
    for vm, why in list(r["failed"].items())[:5]:
        lines.append(f"failed: {vm}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vms", type=int, default=100, help="VMs to create")
    parser.add_argument("--hypervisor", choices=["qemu", "test"], default="qemu")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="between creations")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    if args.vms < 1 or args.interval_ms < 0:
        parser.error("--vms must be at least 1 and --interval-ms not negative")
    try:
        result = uvloop.run(
            run(vms=args.vms, hypervisor=args.hypervisor, interval_ms=args.interval_ms)
        )
    except VirtbusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result) if args.output == "json" else _table(result), flush=True)
    if result["running"] < args.vms or result["raw_running"] < args.vms:
        print(f"error: {args.vms - result['running']} VMs did not reach Running "
              f"({args.vms - result['raw_running']} raw)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
