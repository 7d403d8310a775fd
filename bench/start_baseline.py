"""`bench start`'s baseline: the same N domains started by raw libvirt-python, same node and run.

Run after the warm-up VM, before the orchestrated VMs, so both see the same node (libvirtd up, QEMU
paged in, one guest running). Each domain is the XML the worker renders (`render_domain` with the
same spec and volumes), `defineXML` + `create()`d at the same pace, in a thread of a pool as large
as the worker's libvirt pool (`LIBVIRT_THREADS`) so they overlap like the orchestrated starts; each
is timed from the call to `defineXML` to `create()` returning; then destroyed and undefined.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt

from bench.rig import vm_spec
from bench.start_timing import paced, percentiles
from workers import hypervisor as hv
from workers.domain import render_domain
from workers.volumes import Volumes


def _define_and_create(conn: Any, xml: str) -> None:
    dom = conn.defineXML(xml)
    dom.create()


def _destroy_and_undefine(conn: Any, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()


async def raw_baseline(
    uri: str, *, run_id: str, vms: int, interval_s: float, kvm: bool, work: Path
) -> dict[str, Any]:
    """Define and create N domains 100 ms apart with libvirt-python alone; their latencies."""
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
            await paced(vms, interval_s, spawn)
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
    return {"running": len(lat), "errors": errors[:3], "latency": percentiles(lat), "wall_s": wall}
