"""The QEMU capabilities cache shared by every QEMU node on this machine.

libvirtd probes every QEMU binary on its first call (~8 s). The probe's result is kept in one
directory per machine and copied into each new node before its libvirtd starts, so later nodes
answer in ~0.1 s. A file lock orders the nodes: a node that starts cold keeps it until its probe
is saved, so the next node waits for a warm cache instead of probing too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from pathlib import Path
from typing import Final

CAPS_CACHE_ENV: Final = "VIRTBUS_QEMU_CAPS_CACHE"
DEFAULT_CAPS_CACHE: Final = Path("/var/cache/virtbus/qemu-caps")
CAPS_SUBDIR: Final = Path("qemu/capabilities")  # under a libvirtd's /var/cache/libvirt


class CapsCache:
    def __init__(self, path: Path | None = None) -> None:
        env = os.environ.get(CAPS_CACHE_ENV)
        self.path = path or (Path(env) if env else DEFAULT_CAPS_CACHE)
        self._lock_fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    async def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
            return

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def copy_in(self, libvirt_cache: Path) -> bool:
        """Copy the shared probe results into a node's libvirt cache; whether there were any."""
        files = sorted(self.path.glob("*.xml"))
        dest = libvirt_cache / CAPS_SUBDIR
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, dest / f.name)
        return bool(files)

    def save(self, libvirt_cache: Path, *, dry_run: bool = False) -> int:
        """Copy a node's probe results into the shared cache where they differ; the count."""
        differ = 0
        for f in sorted((libvirt_cache / CAPS_SUBDIR).glob("*.xml")):
            shared, data = self.path / f.name, f.read_bytes()
            if shared.exists() and shared.read_bytes() == data:
                continue
            differ += 1
            if not dry_run:
                tmp = self.path / f".{f.name}.{os.getpid()}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, shared)
        return differ
