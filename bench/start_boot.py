"""`bench start`'s boot phase: creation -> guest booted for the tiny guest, against raw libvirt.

Why: the density run times creation->Running, which on QEMU means "QEMU's CPUs run"; a user waits
for the guest. This phase boots the tiny guest (`virtbus/guest/`, the image `virtbus up` serves)
one VM at a time and times each to its guest agent connecting (libvirt's agent-lifecycle event,
which the worker records as `GuestAgentChanged`): the guest has booted its kernel, run its init
and cloud-init and started its services by then. Orchestrated: from just before the `ApplyVM`
(runStrategy Always) is published to `GuestAgentChanged(connected)` reaching the follower of the
log. Raw, same node, same run: the XML the worker renders for the same spec and volumes,
`defineXML` + `create()`, timed to the same libvirt event on a connection of its own. Rounds
alternate raw and orchestrated, and each guest is gone before the next boots, so both sides see the
same host (a TCG guest, as on PVM hosts, costs CPU while it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Final

import libvirt
from nats.aio.client import Client

from bench.rig import publish
from bench.start_timing import Follower, mark, percentiles
from events import commands as c
from virtbus.guestdisk import IMAGE
from workers.domain import render_domain
from workers.volumes import Volumes, image_dir

BOOT_S: Final = 180.0  # one boot on TCG on a loaded 2-core host, with margin


def boot_spec() -> dict[str, Any]:
    """The tiny guest as `examples/vm-tiny-linux.yaml` has it (no VNC: nobody watches)."""
    return {
        "runStrategy": "Always",
        "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "resources": {"requests": {"memory": "128Mi"}},
                "devices": {
                    "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}},
                              {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
                    "autoattachGraphicsDevice": False,
                },
            },
            "volumes": [
                {"name": "containerdisk", "containerDisk": {"image": IMAGE}},
                {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
            ],
        }},
    }  # fmt: skip


def provide_image(data_dir: Path, disk: Path) -> None:
    """The guest in the node's image dir (as pre-filled by hand): no registry in the timing."""
    d = image_dir(data_dir, IMAGE)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(disk, d / "disk.qcow2")


class AgentWatch:
    """A raw libvirt connection's agent-lifecycle events: when each domain's agent connected."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: Any = None
        self.waiting: dict[str, asyncio.Future[float]] = {}

    async def __aenter__(self) -> AgentWatch:
        self.conn = await asyncio.to_thread(libvirt.open, self.uri)
        up = libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        loop = asyncio.get_running_loop()

        def on_agent(_conn: Any, dom: Any, state: int, _reason: int, _opaque: Any) -> None:
            t = time.perf_counter()
            fut = self.waiting.get(dom.name())
            if state == up and fut is not None:
                loop.call_soon_threadsafe(_settle, fut, t)

        # Delivered by the event loop implementation the worker registered (libvirtaio).
        self.cb = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, on_agent, None
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.domainEventDeregisterAny(self.cb)
        await asyncio.to_thread(self.conn.close)

    async def boot(self, dom: str, xml: str) -> float:
        """defineXML + create() `xml` (named `dom`); ms until its agent connected."""
        fut = self.waiting[dom] = asyncio.get_running_loop().create_future()
        t = time.perf_counter()
        try:
            await asyncio.to_thread(lambda: self.conn.defineXML(xml).create())
            booted: float = await asyncio.wait_for(fut, BOOT_S)
            return (booted - t) * 1e3
        finally:
            del self.waiting[dom]
            await asyncio.to_thread(self._remove, dom)

    def _remove(self, dom: str) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            d = self.conn.lookupByName(dom)
            if d.isActive():
                d.destroy()
            d.undefine()


def _settle(fut: asyncio.Future[float], t: float) -> None:
    if not fut.done():
        fut.set_result(t)


async def _raw_xml(work: Path, *, run_id: str, i: int, kvm: bool) -> tuple[str, str]:
    spec, vm, uid = boot_spec(), f"rawboot-{i}", str(uuid.uuid4())
    resolved = await Volumes(work).resolve(spec, namespace="default", name=vm, uid=uid)
    xml = render_domain(spec, name=vm, namespace="default", uid=uid, volumes=resolved, kvm=kvm)
    dom = f"bench-rawboot-{run_id}-{i}"  # no "_": no VM of the worker's (it ignores it)
    return dom, xml.replace(f"<name>default_{vm}</name>", f"<name>{dom}</name>", 1)


async def _orchestrated(nc: Client, log: Follower, *, name: str) -> float:
    mark(log.marks, name, "publish")
    await publish(nc, c.ApplyVM(id=f"{name}-apply", name=name, spec=boot_spec(), actor="bench"))
    if not await log.until([name], "booted", within=BOOT_S):
        why = log.failures.get(name, "its guest agent never connected")
        raise TimeoutError(f"{name} not booted within {BOOT_S:.0f}s: {why}")
    await publish(nc, c.DeleteVM(id=f"{name}-delete", name=name, actor="bench"))
    await log.until([name], "stopped", within=60)  # gone before the next boot
    return (log.marks[name]["booted"] - log.marks[name]["publish"]) * 1e3


async def boot_phase(
    nc: Client, log: Follower, *, uri: str, image: Path, data_dir: Path, run_id: str,
    boots: int, kvm: bool,
) -> dict[str, Any]:  # fmt: skip
    """`boots` rounds, each a raw boot then an orchestrated one; their latencies and ratios."""
    provide_image(data_dir, image)
    work = data_dir / "rawboot"
    provide_image(work, image)
    raw: list[float] = []
    virtbus: list[float] = []
    try:
        async with AgentWatch(uri) as watch:
            for i in range(boots):
                dom, xml = await _raw_xml(work, run_id=run_id, i=i, kvm=kvm)
                raw.append(await watch.boot(dom, xml))
                virtbus.append(await _orchestrated(nc, log, name=f"bench-{run_id}-boot-{i}"))
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    o, r = percentiles(virtbus), percentiles(raw)
    return {
        "boots": boots,
        "boot_p50_ms": o["p50"], "boot_max_ms": o["max"],
        "raw_boot_p50_ms": r["p50"], "raw_boot_max_ms": r["max"],
        "boot_ratio_p50": o["p50"] / r["p50"] if r["p50"] else 0.0,
        "boot_ms": [round(v) for v in virtbus], "raw_boot_ms": [round(v) for v in raw],
    }  # fmt: skip
