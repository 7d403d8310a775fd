"""What `bench start` times along creation->Running, and how.

Marks (per VM, the first time each point was passed) come from three places, none of which
changes the worker: subclasses of its hypervisor and launcher driver time libvirt's define and
create and each launcher's start, and one follower of the log sees `VMCreated`, `VMScheduled` and
`DomainStarted` arrive. `STAGES` cuts creation->Running into segments between those marks, so the
report can say where the time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from nats.aio.client import Client

from bus.store import EventStore
from events import model as m
from workers import hypervisor as hv
from workers.pods import ProcessPods

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


def mark(marks: Marks, vm: str, key: str) -> None:
    marks.setdefault(vm, {}).setdefault(key, time.perf_counter())


class SizedHypervisor(hv.Hypervisor):
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
        mark(self.marks, vm, "define_begin")
        try:
            return await super().define(xml)
        finally:
            mark(self.marks, vm, "define_end")

    async def start(self, name: str) -> None:
        vm = name.partition("_")[2]
        mark(self.marks, vm, "start_begin")
        try:
            await super().start(name)
        finally:
            mark(self.marks, vm, "start_end")


class TimedPods(ProcessPods):
    """The worker's launcher driver, timing each launcher's start."""

    def __init__(self, pods: ProcessPods, *, marks: Marks) -> None:
        super().__init__(pods.on_exit)
        self.marks = marks

    async def create(self, pod: str, *, namespace: str = "default") -> str:
        vm = pod.removeprefix("virt-launcher-").rpartition("-")[0]
        mark(self.marks, vm, "pod_begin")
        try:
            return await super().create(pod, namespace=namespace)
        finally:
            mark(self.marks, vm, "pod_end")


class Follower:
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
                mark(self.marks, vm, key)
            elif isinstance(data, m.GuestAgentChanged) and data.connected:
                mark(self.marks, vm, "booted")  # the boot phase's guests (start_boot.py)
            elif isinstance(data, m.DomainStopped):
                mark(self.marks, vm, "stopped")
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


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "max": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "max": max(values)}


async def paced(n: int, interval_s: float, job: Callable[[int], Awaitable[None]]) -> None:
    """Run job(0..n-1) one after another, each starting at t0 + i * interval (no drift)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(n):
        if (delay := t0 + i * interval_s - loop.time()) > 0:
            await asyncio.sleep(delay)
        await job(i)
