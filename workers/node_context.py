"""What a node worker hands its parts: the node's name and settings, the hypervisor, the store,
how to report an observation, which lifecycle events our own calls will cause, and the launchers.

The worker owns these and passes them in (as temporalio's `_ActivityWorker(bridge_worker=...,
data_converter=...)` is given its dependencies), so the VM lifecycle, migrations, snapshots and
the sync loop receive exactly what they use, none reaches into another's private members, and no
module imports the worker back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from bus.store import EventStore
from events import model as m
from events.errors import HypervisorError
from events.names import Ref
from workers.domain import render_domain
from workers.hypervisor import (
    PAUSED_STATE,
    RUNNING_STATES,
    DomainEvent,
    Hypervisor,
    domain_name,
    ref_of_domain,
)
from workers.imagecache import OnPull
from workers.pods import ExitHandler, PodDriver
from workers.vmnet import VMNetwork
from workers.volumes import Volumes


class Observe(Protocol):
    """Tell the log what this node saw happen to a VM; `together`: as one batch, so that no
    decision lands between them."""

    def __call__(
        self, ref: Ref, events: Sequence[m.Event], *, together: bool = False
    ) -> Awaitable[None]: ...


EXPECT_S = 10.0  # how long an event our own call caused may take to arrive


class MigrationSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How this node's domains migrate: a node setting, given by whoever starts the node."""

    # The disks stay at their paths, which every node shares (shared storage, or nodes on one
    # machine); libvirt cannot always tell, and refuses non-"none" cache modes unless told.
    shared_storage: bool = False
    # The address migration data travels over (the target listens on it, the source connects to
    # it); "" leaves it to libvirt (the target's host name). Nodes on one machine: loopback.
    address: str = ""


class Expectations:
    """Lifecycle events our own calls will cause (a destroy, a pause for a snapshot...), so the
    event libvirt then sends is not reported as news; each is met once, or lapses."""

    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[str, float]]] = {}

    def expect(self, dom: str, kind: str) -> None:
        self._pending.setdefault(dom, []).append((kind, time.monotonic() + EXPECT_S))

    def forget(self, dom: str, kind: str) -> None:
        """Drop what is expected of `kind`: the event it waited for never came."""
        self._pending[dom] = [(k, t) for k, t in self._pending.get(dom, []) if k != kind]

    def met(self, ev: DomainEvent) -> bool:
        """Whether `ev` was expected (it is then no longer)."""
        now = time.monotonic()
        pending = [(k, t) for k, t in self._pending.get(ev.domain, []) if t > now]
        for i, (kind, _) in enumerate(pending):
            if kind == ev.kind:
                del pending[i]
                self._pending[ev.domain] = pending
                return True
        self._pending[ev.domain] = pending
        return False


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeContext:
    """The node as its parts see it."""

    node: str
    hv: Hypervisor
    store: EventStore
    observe: Observe
    expectations: Expectations = field(default_factory=Expectations)
    migration: MigrationSettings = field(default_factory=MigrationSettings)
    network: VMNetwork | None = None  # the VM network (QEMU nodes that make it), or none


class Domains:
    """A VM's domain XML on this node: its volumes resolved here, KVM or plain QEMU."""

    def __init__(self, volumes: Volumes) -> None:
        self.volumes = volumes
        self.kvm = False  # known once the worker has asked libvirt (Worker.run)

    async def xml(
        self, spec: dict[str, Any], *, ref: Ref, uid: str, on_pull: OnPull | None = None,
        tap: str = "", mac: str = "",
    ) -> str:  # fmt: skip
        volumes = await self.volumes.resolve(
            spec, namespace=ref.namespace, name=ref.name, uid=uid, on_pull=on_pull
        )
        return render_domain(spec, name=ref.name, namespace=ref.namespace, uid=uid,
                             volumes=volumes, kvm=self.kvm, tap=tap, mac=mac)  # fmt: skip


class Launchers:
    """The launcher pod of each domain on this node (KubeVirt's virt-launcher), and what a
    launcher's death means for its VM."""

    def __init__(self, ctx: NodeContext, *, driver: Callable[[ExitHandler], PodDriver]) -> None:
        self.ctx = ctx
        self.driver = driver(self.exited)
        self._pods: dict[str, str] = {}  # domain -> its launcher pod

    def pod_of(self, dom: str) -> str | None:
        return self._pods.get(dom)

    async def start(self, dom: str, pod: str, *, namespace: str) -> str:
        self._pods[dom] = await self.driver.create(pod, namespace=namespace)
        return self._pods[dom]

    async def delete(self, dom: str) -> str | None:
        """The domain's launcher goes (it has nothing to run); its name, if it had one."""
        if pod := self._pods.pop(dom, None):
            await self.driver.delete(pod)
        return pod

    async def remove(self, dom: str, *, running: bool) -> None:
        """The domain goes from libvirt, and its launcher with it."""
        hv = self.ctx.hv
        if running:
            self.ctx.expectations.expect(dom, "stopped")
            with contextlib.suppress(HypervisorError):
                await hv.destroy(dom)
        with contextlib.suppress(HypervisorError):
            await hv.undefine(dom)
        if self.ctx.network is not None:
            await self.ctx.network.remove(dom)
        await self.delete(dom)

    async def adopt(self, kept: Mapping[str, Ref]) -> set[str]:
        """After a restart: the launchers (pod -> VM) of the VMs kept here are ours again; returns
        the pods that went away meanwhile."""
        missing = await self.driver.adopt({pod: ref.namespace for pod, ref in kept.items()})
        for pod, ref in kept.items():
            self._pods[domain_name(ref)] = pod
        return missing

    async def exited(self, pod: str, code: int) -> None:
        """A launcher ended without being asked: its domain goes too, and the VM has failed."""
        dom = next((d for d, p in self._pods.items() if p == pod), None)
        if dom is None:
            return
        ref = ref_of_domain(dom)
        state = await self.ctx.hv.state(dom)
        await self.remove(dom, running=state in RUNNING_STATES or state == PAUSED_STATE)
        if ref is not None:
            failed = m.LauncherFailed(
                node=self.ctx.node, pod=pod, reason=f"launcher exited with code {code}",
                exit_code=code,
            )  # fmt: skip
            await self.ctx.observe(ref, [failed])

    async def close(self) -> None:
        await self.driver.close()
