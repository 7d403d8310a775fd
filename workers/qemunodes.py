"""Real QEMU/KVM nodes on one machine, each a privileged libvirtd in its own mount namespace.

Why: live migration, snapshots and drains must be tested against real libvirt and QEMU, with
several nodes, on one host and without systemd. A node is a libvirtd whose /etc/libvirt,
/run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are bind mounts of the
node's own dirs inside a private mount namespace (nothing shows in the root namespace), with its
own `host_uuid` (libvirt refuses to migrate to "the same host") and its own migration port range.
Clients reach it at `qemu+unix:///system?socket=<node>/run/libvirt-sock`.

libvirtd probes every QEMU binary on its first call (~8 s); the probe result is kept in one shared
capabilities cache per machine (`qemucaps`) and copied into each new node, so later nodes answer in
~0.1 s. Nodes on one machine share their disks' paths and reach each other on loopback: their
migration settings say so (`SAME_MACHINE`). libvirtd dies with us (PR_SET_PDEATHSIG); guests
outlive their daemon, so `stop()` destroys the domains, stops libvirtd, then kills any process
still holding this node's mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import libvirt

from events.errors import HypervisorError
from workers.node_context import MigrationSettings
from workers.qemucaps import CapsCache

LIBVIRTD: Final = "/usr/sbin/libvirtd"
QEMU_SYSTEM: Final = "/usr/bin/qemu-system-x86_64"
QEMU_IMG: Final = "/usr/bin/qemu-img"
# node subdir -> the path libvirtd sees it as, inside the node's mount namespace
MOUNTS: Final = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
MIGRATION_PORT_BASE: Final = 49152
DISPLAY_PORT_BASE: Final = 5900
PORTS_PER_NODE: Final = 64
# Live, libvirtd to libvirtd, the domain ends up defined on the target only.
MIGRATION_FLAGS: Final = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
# The disks stay at their paths, which every node here shares; migration data over loopback.
SAME_MACHINE: Final = MigrationSettings(shared_storage=True, address="127.0.0.1")
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def kvm_usable() -> tuple[bool, str]:
    """Whether real KVM guests can run here: root (privileged libvirtd) and /dev/kvm read/write."""
    if os.geteuid() != 0:
        return False, f"not root (euid {os.geteuid()}): a privileged libvirtd node needs root"
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist: no hardware virtualization (or nested KVM) here"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return False, f"/dev/kvm is not readable and writable: {e.strerror}"
    return True, "root, /dev/kvm read/write"


def qemu_available() -> tuple[bool, str]:
    """Whether libvirtd, QEMU and the tools a node needs are installed (by `make setup`)."""
    missing = [p for p in (LIBVIRTD, QEMU_SYSTEM, QEMU_IMG) if not os.access(p, os.X_OK)]
    missing += [t for t in ("unshare", "mount", "sh") if shutil.which(t) is None]
    if missing:
        return False, f"missing {', '.join(missing)}: run `make setup` as root"
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        return False, "no libvirt-qemu user/group (libvirtd refuses to start): run `make setup`"
    return True, f"{LIBVIRTD}, {QEMU_SYSTEM}, {QEMU_IMG}"


def migration_params() -> dict[str, Any]:
    """migrateToURI3 params for loopback: a qemu.conf `migration_host` cannot be 127.0.0.1."""
    return {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1",
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1",
    }


def tiny_domain_xml(name: str, *, kvm: bool, memory_mib: int = 64, disk: Path | None = None) -> str:
    """A guest with no OS (nothing boots; ACPI shutdown is ignored), optionally one qcow2 disk."""
    disk_xml = ""
    if disk is not None:
        disk_xml = (
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        )
    return (
        f"<domain type='{'kvm' if kvm else 'qemu'}'><name>{name}</name>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
        f"<devices><emulator>{QEMU_SYSTEM}</emulator>{disk_xml}</devices></domain>"
    )


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _holds_mounts_of(pid: int, sources: dict[str, tuple[str, str]]) -> bool:
    """Whether `pid`'s mount table has one of our bind mounts (target -> (dev, source path))."""
    try:
        info = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return False
    for line in info.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[4] not in sources:
            continue
        dev, path = sources[fields[4]]
        root = _unescape(fields[3])
        if fields[2] == dev and root != "/" and path.endswith(root):
            return True
    return False


async def _terminate(proc: asyncio.subprocess.Process, *, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; until it has ended."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


class QemuNode:
    """One libvirt QEMU node: `async with QemuNode(base, "node-a", index=0) as node: node.uri`."""

    def __init__(
        self,
        base: Path,
        name: str,
        *,
        index: int,
        caps_cache: Path | None = None,
        ready_timeout: float = 60,
    ) -> None:
        if not 0 <= index < 256:
            raise ValueError(f"node index {index} out of range 0..255")
        self.name = name
        self.index = index
        self.dir = (base / name).resolve()
        self.caps = CapsCache(caps_cache)
        self.migration = SAME_MACHINE
        self.ready_timeout = ready_timeout
        self.host_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtbus-node:{self.dir}"))
        low = MIGRATION_PORT_BASE + index * PORTS_PER_NODE
        self.migration_ports = (low, low + PORTS_PER_NODE - 1)
        self.socket = self.dir / "run" / "libvirt-sock"
        if len(str(self.socket).encode()) >= 108:  # sun_path limit
            raise ValueError(f"node dir too deep for a unix socket: {self.socket}")
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.log_file = self.dir / "log" / "libvirtd.log"
        self.caps_warm = False
        self.timings: dict[str, float] = {}
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """libvirtd's pid (it is exec'd by the namespace setup, so this is the daemon itself)."""
        return self._proc.pid if self._proc else None

    async def __aenter__(self) -> QemuNode:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _configs(self) -> dict[str, str]:
        low, high = self.migration_ports
        display = DISPLAY_PORT_BASE + self.index * PORTS_PER_NODE
        libvirtd = (
            f'host_uuid = "{self.host_uuid}"\nunix_sock_group = "root"\n'
            'unix_sock_rw_perms = "0770"\nauth_unix_ro = "none"\nauth_unix_rw = "none"\n'
            f'log_outputs = "3:file:{MOUNTS["log"]}/libvirtd.log"\n'
        )
        qemu = (  # no virtlogd, no security driver, no cgroups: root guests in a plain container
            'user = "root"\ngroup = "root"\nstdio_handler = "file"\nsecurity_driver = "none"\n'
            'cgroup_controllers = [ ]\nvnc_listen = "127.0.0.1"\n'
            f"migration_port_min = {low}\nmigration_port_max = {high}\n"
            f"remote_display_port_min = {display}\n"
            f"remote_display_port_max = {display + PORTS_PER_NODE - 1}\n"
        )
        return {"libvirtd.conf": libvirtd, "qemu.conf": qemu}

    def _mount_sources(self) -> dict[str, tuple[str, str]]:
        out = {}
        for sub, target in MOUNTS.items():
            path = self.dir / sub
            with contextlib.suppress(OSError):
                st = path.stat()
                out[target] = (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", str(path))
        return out

    def pids(self) -> list[int]:
        """Every process holding this node's mounts: libvirtd, its QEMU guests, helpers."""
        sources = self._mount_sources()
        if not sources:
            return []
        own_ns = os.stat("/proc/self/ns/mnt")
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ns = os.stat(f"/proc/{entry}/ns/mnt")
            except OSError:
                continue
            if (ns.st_dev, ns.st_ino) == (own_ns.st_dev, own_ns.st_ino):
                continue
            if _holds_mounts_of(int(entry), sources):
                found.append(int(entry))
        return sorted(found)

    async def _wait_previous_daemon(self) -> None:
        """A new daemon started while the old one still ran (stale socket) killed its guests."""
        pid_file = self.dir / "run" / "libvirtd.pid"
        with contextlib.suppress(OSError, ValueError):
            old = int(pid_file.read_text().strip())
            deadline = time.monotonic() + self.ready_timeout
            while old in await asyncio.to_thread(self.pids):
                if time.monotonic() > deadline:
                    raise HypervisorError(f"{self.name}: previous libvirtd {old} still running")
                await asyncio.sleep(0.05)
        for stale in ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock", "libvirtd.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "run" / stale).unlink()

    def _prepare(self) -> None:
        for sub, target in MOUNTS.items():
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
            Path(target).mkdir(parents=True, exist_ok=True)  # the bind mount needs a target
        for conf, text in self._configs().items():
            (self.dir / "etc" / conf).write_text(text)

    def _script(self) -> str:
        steps = [
            f"mount --bind {shlex.quote(str(self.dir / sub))} {target}"
            for sub, target in MOUNTS.items()
        ]
        steps.append(
            f"exec {LIBVIRTD} -f {MOUNTS['etc']}/libvirtd.conf -p {MOUNTS['run']}/libvirtd.pid"
        )
        return " && ".join(steps)

    def _socket_accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True

    def _log_tail(self) -> str:
        lines: list[str] = []
        for f in (self.dir / "log" / "libvirtd.stdio", self.log_file):
            with contextlib.suppress(OSError):
                lines += f.read_text(errors="replace").strip().splitlines()[-4:]
        return " | ".join(lines)

    async def start(self) -> str:
        """Configure, start libvirtd, wait until it answers with QEMU probed; returns `uri`."""
        t0 = time.monotonic()
        await asyncio.to_thread(self._prepare)
        await self._wait_previous_daemon()
        await self.caps.lock()
        self.caps_warm = await asyncio.to_thread(self.caps.copy_in, self.dir / "cache")
        if self.caps_warm:
            self.caps.unlock()  # cold: keep the lock, the next node waits for our probe
        with (self.dir / "log" / "libvirtd.stdio").open("ab") as stdio:
            self._proc = await asyncio.create_subprocess_exec(
                "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", self._script(),
                stdin=asyncio.subprocess.DEVNULL, stdout=stdio, stderr=stdio,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = t0 + self.ready_timeout
        while not await asyncio.to_thread(self._socket_accepts):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                self.caps.unlock()
                raise HypervisorError(
                    f"libvirtd of {self.name} did not start: {self._log_tail()}", retryable=True
                )
            await asyncio.sleep(0.02)
        self.timings["socket"] = time.monotonic() - t0
        t1 = time.monotonic()
        try:
            conn = await self.connect()
            try:
                await asyncio.to_thread(conn.getCapabilities)  # the QEMU probe happens here
            finally:
                await asyncio.to_thread(conn.close)
            cache = self.dir / "cache"
            stale: int = await asyncio.to_thread(self.caps.save, cache, dry_run=True)
            if not self.caps.locked and stale:
                await self.caps.lock()  # libvirt found our copy stale and probed again
            if self.caps.locked:
                await asyncio.to_thread(self.caps.save, cache)
        finally:
            self.caps.unlock()
        self.timings["probe"] = time.monotonic() - t1
        self.timings["start"] = time.monotonic() - t0
        return self.uri

    async def restart_daemon(self, *, grace: float = 10) -> str:
        """libvirtd stopped (SIGTERM) and started again with its guests left running, as a
        libvirt upgrade does: the new daemon takes them back from its state dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await _terminate(proc, grace=grace)
        return await self.start()

    async def connect(self) -> Any:
        """A new libvirt connection to this node (the caller closes it, via asyncio.to_thread)."""
        try:
            return await asyncio.to_thread(libvirt.open, self.uri)
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot connect to {self.name}: {e}", retryable=True) from e

    async def _destroy_domains(self) -> None:
        conn = await self.connect()
        try:
            for dom in await asyncio.to_thread(conn.listAllDomains):
                with contextlib.suppress(libvirt.libvirtError):
                    if await asyncio.to_thread(dom.isActive):
                        await asyncio.to_thread(dom.destroy)
        finally:
            await asyncio.to_thread(conn.close)

    async def stop(self, *, grace: float = 10) -> None:
        """Destroy every domain, SIGTERM libvirtd, then kill whatever still holds our mounts."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(grace):
                    await self._destroy_domains()
        if proc is not None:
            await _terminate(proc, grace=grace)
        self.caps.unlock()
        deadline, killed = time.monotonic() + grace, set[int]()
        while leftovers := await asyncio.to_thread(self.pids):
            killed.update(leftovers)
            for pid in leftovers:  # guests outlive libvirtd; their mount namespace holds ours
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise HypervisorError(f"{self.name}: processes {leftovers} survived SIGKILL")
            await asyncio.sleep(0.05)
        # init reaps the killed guests lazily (~2 s here): wait, so no zombie of ours shows in ps
        deadline = time.monotonic() + min(grace, 5)
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(
                lambda: [p for p in killed if Path(f"/proc/{p}").exists()]
            ):
                break
            await asyncio.sleep(0.05)
        for stale in ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "run" / stale).unlink()
