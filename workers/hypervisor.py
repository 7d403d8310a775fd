"""The hypervisor adapter: libvirt-python made async, and lifecycle events made plain.

Every blocking libvirt call runs in a thread of the adapter's own pool: QEMU's create, a graceful
shutdown or a migration hold a thread for seconds, and in asyncio's shared default pool (cpus + 4
threads) a burst of starts queued every other call behind them. Lifecycle events arrive on the
loop through libvirtaio and land in `events` as `DomainEvent`s with libvirt's reason in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import libvirt
import libvirt_qemu
import libvirtaio
import msgspec

from events.errors import HypervisorError
from events.names import Ref
from workers.accel import kvm_usable

T = TypeVar("T")

# (libvirt event, detail) -> (what happened, why), in the words the log uses.
_KIND: Final = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_REASON: Final = {
    "started": {0: "booted", 1: "migrated", 2: "restored", 3: "from-snapshot", 4: "wakeup"},
    "suspended": {0: "user", 1: "migrated", 2: "io-error", 3: "watchdog", 4: "restored",
                  5: "from-snapshot", 6: "api-error", 7: "postcopy", 8: "postcopy-failed"},
    "resumed": {0: "unpaused", 1: "migrated", 2: "from-snapshot", 3: "postcopy"},
    "stopped": {0: "shutdown", 1: "destroyed", 2: "crashed", 3: "migrated", 4: "saved",
                5: "failed", 6: "from-snapshot"},
    "shutdown": {0: "finished", 1: "guest", 2: "host"},
    "crashed": {0: "panicked", 1: "crashloaded"},
}  # fmt: skip
# An agent "disconnected" because the domain just started: nothing that was there went away.
_AGENT_ABSENT_AT_START: Final = (
    libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED
)
RUNNING_STATES: Final = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
PAUSED_STATE: Final = libvirt.VIR_DOMAIN_PAUSED
LIBVIRT_THREADS: Final = 32  # libvirt multiplexes calls from many threads on one connection
RECONNECT_PAUSE_S: Final = 0.5  # between attempts to reach a restarting libvirtd
RECONNECT_WAIT_S: Final = 30.0  # how long a call waits for it before it fails (and is retried)


def domain_name(ref: Ref) -> str:
    """A VM's libvirt domain: KubeVirt's `<namespace>_<name>` (DNS-1123 names have no "_")."""
    return f"{ref.namespace}_{ref.name}"


def ref_of_domain(name: str) -> Ref | None:
    """The VM a domain belongs to, or None for a domain that is not one of ours."""
    ns, sep, vm = name.partition("_")
    return Ref("vm", ns, vm) if sep else None


class DomainEvent(msgspec.Struct, frozen=True):
    domain: str
    kind: str
    reason: str


class HostInfo(msgspec.Struct, frozen=True):
    cpus: int
    memory_bytes: int
    hypervisor: str
    kvm: bool


def _register_event_loop() -> None:
    """libvirtaio must bind to the running loop before the first open(), once per process."""
    loop = asyncio.get_running_loop()
    impl = libvirtaio.getCurrentImpl()
    if impl is None:
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    elif impl.loop is not loop:
        raise HypervisorError("libvirt events are bound to another event loop in this process")


class Hypervisor:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.events: asyncio.Queue[DomainEvent] = asyncio.Queue()
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._pool = ThreadPoolExecutor(LIBVIRT_THREADS, thread_name_prefix=f"libvirt-{uri}")
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if (back := self._reconnecting) is not None:  # libvirtd restarting: wait for it a while
            await asyncio.wait({back}, timeout=RECONNECT_WAIT_S)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
        except libvirt.libvirtError as err:
            why = f"libvirt: {err.get_error_message()}"
            if self._conn is not None and not self._alive():  # lost: worth another try later
                raise HypervisorError(f"{why} (libvirtd is away)", retryable=True) from err
            raise HypervisorError(why) from err

    def _alive(self) -> bool:
        with contextlib.suppress(libvirt.libvirtError):
            return bool(self._conn.isAlive())
        return False

    async def open(self) -> None:
        _register_event_loop()
        # libvirt prints every error on stderr by default; ours arrive as exceptions, and a
        # lookup of a domain that is not there (yet, or any more) is routine during migrations.
        libvirt.registerErrorHandler(lambda *_: None, None)
        self._conn = await self._call(libvirt.open, self.uri)
        self._watch(self._conn)

    def _watch(self, conn: Any) -> None:
        """Domain events from `conn`, and a new connection when it closes (libvirtd restarted:
        virt-handler's libvirt connection is re-made the same way)."""
        loop = asyncio.get_running_loop()

        def on_event(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            kind = _KIND.get(event, str(event))
            reason = _REASON.get(kind, {}).get(detail, str(detail))
            loop.call_soon_threadsafe(self.events.put_nowait, DomainEvent(dom.name(), kind, reason))

        def on_reboot(_conn: Any, dom: Any, _opaque: Any) -> None:
            ev = DomainEvent(dom.name(), "rebooted", "guest")
            loop.call_soon_threadsafe(self.events.put_nowait, ev)

        def on_agent(_conn: Any, dom: Any, state: int, reason: int, _opaque: Any) -> None:
            up = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
            if not up and reason == _AGENT_ABSENT_AT_START:
                return
            ev = DomainEvent(dom.name(), "agent", "connected" if up else "disconnected")
            loop.call_soon_threadsafe(self.events.put_nowait, ev)

        def on_memory(_conn: Any, dom: Any, _alias: str, size_kib: int, _opaque: Any) -> None:
            # the guest's virtio-mem driver plugged memory: how much of the device it uses now
            ev = DomainEvent(dom.name(), "memory", str(size_kib))
            loop.call_soon_threadsafe(self.events.put_nowait, ev)

        def on_close(_conn: Any, _reason: int, _opaque: Any) -> None:
            loop.call_soon_threadsafe(self._lost)

        register = conn.domainEventRegisterAny
        self._callback_ids = [
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None),
            # A guest's reboot is no lifecycle change in libvirt (on_reboot=restart): its own event.
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, on_reboot, None),
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, on_agent, None),
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE, on_memory, None),
        ]
        conn.registerCloseCallback(on_close, None)

    def _lost(self) -> None:
        if not self._closing and self._reconnecting is None:
            back = asyncio.create_task(self._reconnect(), name=f"libvirt-back-{self.uri}")
            self._reconnecting = back

    async def _reconnect(self) -> None:
        """Open a new connection until libvirtd answers again, then say "reconnected": what
        happened to the domains meanwhile sent no event, so the worker syncs again."""
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                try:
                    conn = await loop.run_in_executor(self._pool, libvirt.open, self.uri)
                except libvirt.libvirtError:
                    await asyncio.sleep(RECONNECT_PAUSE_S)
                    continue
                old, self._conn = self._conn, conn
                with contextlib.suppress(libvirt.libvirtError):
                    await loop.run_in_executor(self._pool, old.close)
                self._watch(conn)
                self.events.put_nowait(DomainEvent("", "reconnected", ""))
                return
        finally:
            self._reconnecting = None

    async def close(self) -> None:
        self._closing = True
        if (back := self._reconnecting) is not None:
            back.cancel()
            await asyncio.gather(back, return_exceptions=True)
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        for callback_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):  # the connection may be gone
                conn.domainEventDeregisterAny(callback_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=False)  # conn.close was the last call: no thread is busy

    async def host(self) -> HostInfo:
        info = await self._call(self._conn.getInfo)
        kind = await self._call(self._conn.getType)
        kvm = kind == "QEMU" and kvm_usable()
        return HostInfo(
            cpus=int(info[2]), memory_bytes=int(info[1]) << 20, hypervisor=kind, kvm=kvm
        )

    def _lookup(self, name: str) -> Any:
        return self._conn.lookupByName(name)

    async def exists(self, name: str) -> bool:
        return name in await self.domains()

    async def domains(self) -> dict[str, int]:
        """Every domain on this node, defined or running, by name, with its libvirt state."""

        def listing() -> dict[str, int]:
            out = {}
            for dom in self._conn.listAllDomains(0):
                # A domain may vanish between the listing and the question (a concurrent stop).
                with contextlib.suppress(libvirt.libvirtError):
                    out[dom.name()] = dom.state()[0]
            return out

        return await self._call(listing)

    async def state(self, name: str) -> int | None:
        """The domain's libvirt state, or None when there is no such domain."""

        def lookup() -> int | None:
            try:
                return int(self._conn.lookupByName(name).state()[0])
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self._call(lookup)

    async def define(self, xml: str) -> str:
        dom = await self._call(self._conn.defineXML, xml)
        return str(dom.UUIDString())

    async def start(self, name: str) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.create)

    async def shutdown(self, name: str) -> None:
        """Press the ACPI power button, as KubeVirt's stop does (libvirt's default would ask the
        guest agent first where one answers); the test driver knows only its default."""
        dom = await self._call(self._lookup, name)
        try:
            await self._call(dom.shutdownFlags, libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except HypervisorError:
            await self._call(dom.shutdown)

    async def destroy(self, name: str) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.destroy)

    async def suspend(self, name: str) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.suspend)

    async def resume(self, name: str) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.resume)

    async def reset(self, name: str) -> None:
        """The reset button (virDomainReset): no shutdown, the guest starts over."""
        await self.on_domain(name, lambda dom: dom.reset(0))

    async def on_domain(self, name: str, fn: Callable[[Any], T]) -> T:
        """`fn(domain)` in the libvirt pool: for the calls of other modules (dumps, screens)."""
        dom = await self._call(self._lookup, name)
        return await self._call(fn, dom)

    async def xml(self, name: str, *, migratable: bool = False) -> str:
        """The domain's live XML (its definition when it is not running); `migratable`: as a
        migration's destination XML must be."""
        dom = await self._call(self._lookup, name)
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0
        return str(await self._call(dom.XMLDesc, flags))

    async def guest_info(self, name: str) -> dict[str, Any]:
        """What the guest agent says of the guest (virDomainGetGuestInfo: os, users, filesystems,
        hostname, timezone, flat keys); HypervisorError when no agent answers."""
        dom = await self._call(self._lookup, name)
        return dict(await self._call(dom.guestInfo, 0, 0))

    async def agent_command(self, name: str, command: str, *, timeout_s: int = 10) -> Any:
        """One guest-agent command (QMP JSON, e.g. guest-info); its `return`."""
        dom = await self._call(self._lookup, name)
        answer = await self._call(libvirt_qemu.qemuAgentCommand, dom, command, timeout_s, 0)
        return json.loads(answer).get("return")

    async def reboot_guest(self, name: str, *, agent: bool) -> None:
        """The guest's own clean reboot (virtctl soft-reboot): asked through its agent, or by the
        ACPI power button (what KubeVirt falls back to without an agent)."""
        dom = await self._call(self._lookup, name)
        flag = (
            libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT
            if agent
            else libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN
        )
        await self._call(dom.reboot, flag)

    async def attach_device(self, name: str, xml: str) -> None:
        """Hotplug a device into the running domain and keep it in its definition."""
        dom = await self._call(self._lookup, name)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        await self._call(dom.attachDeviceFlags, xml, flags)

    async def detach_device(self, name: str, xml: str) -> None:
        dom = await self._call(self._lookup, name)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        await self._call(dom.detachDeviceFlags, xml, flags)

    async def set_vcpus(self, name: str, count: int) -> None:
        """Plug or unplug vCPUs of the running domain, and keep the count in its definition."""
        dom = await self._call(self._lookup, name)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        await self._call(dom.setVcpusFlags, count, flags)

    async def update_device(self, name: str, xml: str) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.updateDeviceFlags, xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    async def migrate(
        self, name: str, dest_uri: str, *, params: dict[str, Any], flags: int
    ) -> None:
        """Peer-to-peer migration: this node's libvirtd drives it to `dest_uri`'s."""
        dom = await self._call(self._lookup, name)
        await self._call(dom.migrateToURI3, dest_uri, params, flags)

    async def job_stats(self, name: str) -> dict[str, Any]:
        """The domain's current job (libvirt's jobStats keys); `type` 0 means none."""
        dom = await self._call(self._lookup, name)
        return dict(await self._call(dom.jobStats, 0))

    async def abort_job(self, name: str) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.abortJob)

    async def start_post_copy(self, name: str) -> None:
        """Switch a running migration (started with VIR_MIGRATE_POSTCOPY) to post-copy."""
        dom = await self._call(self._lookup, name)
        await self._call(dom.migrateStartPostCopy, 0)

    async def set_max_downtime(self, name: str, ms: int) -> None:
        dom = await self._call(self._lookup, name)
        await self._call(dom.migrateSetMaxDowntime, ms, 0)

    async def undefine(self, name: str) -> None:
        dom = await self._call(self._lookup, name)
        flags = libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        try:
            await self._call(dom.undefineFlags, flags)
        except HypervisorError:
            await self._call(dom.undefine)  # drivers without flag support (the test driver)


async def remote_domain(uri: str, name: str) -> tuple[int | None, dict[str, Any]]:
    """On another node (a migration's target): the domain's state (None: no such domain) and
    its last completed job's stats (a finished incoming migration's downtime is there)."""

    def look() -> tuple[int | None, dict[str, Any]]:
        conn = libvirt.open(uri)
        try:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None, {}
                raise
            stats: dict[str, Any] = {}
            with contextlib.suppress(libvirt.libvirtError):
                stats = dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
            return int(dom.state()[0]), stats
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(look)
    except libvirt.libvirtError as err:
        raise HypervisorError(f"libvirt: {err.get_error_message()}", retryable=True) from err
