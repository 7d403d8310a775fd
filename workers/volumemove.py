"""Moving a volume between nodes: the new node pulls the data from the old one over the bus.

The old node serves its `disk.img` on a `volume-read` session, extent by extent (holes are skipped
with SEEK_DATA/SEEK_HOLE, so a sparse 30Gi disk costs what it holds); each frame is an 8-byte
offset and the data. The new node writes aside and renames into place only when the whole file
has arrived, then records `VolumeMoved`; the controller then has the old copy removed. A copy that
fails records `VolumeMoveFailed` and leaves the volume whole where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from bus.tunnel import Pipe, SessionOpen, connect
from events import model as m
from events import work as w
from events.errors import ValidationError, VirtbusError
from events.names import Ref
from workers.sessions import Body
from workers.volumestore import DISK, VolumeStore

CHUNK = 256 * 1024 - 8  # one frame: the offset and up to this much data
IDLE_S = 30.0


def extents(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """The file's size and its (start, end) data ranges; all of it where holes are unknown."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out, pos = [], 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    break
                return size, [(0, size)]  # no SEEK_DATA here: copy everything
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
        return size, out
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, at: int) -> None:
    # A disk filling up can take part of a write and return: the rest is retried, which raises
    # ENOSPC, instead of a silent hole the final truncate would turn into zeros.
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


class Mover:
    def __init__(self, volumes: VolumeStore) -> None:
        self.volumes = volumes
        self.store = volumes.store

    async def serve(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        """The old node's end: the data of a volume that is moving away from here."""
        s = await self.volumes.state(req.namespace, req.name)
        if not (s.exists and s.node == self.volumes.node and s.moving_to):
            raise ValidationError(f'persistentvolumeclaims "{req.name}" is not moving from here')
        path = self.volumes.path(req.namespace, req.name) / DISK
        size, ranges = await asyncio.to_thread(extents, path)

        async def body(pipe: Pipe) -> None:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
            try:
                for start, end in ranges:
                    for at in range(start, end, CHUNK):
                        data = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - at), at)
                        await pipe.send(struct.pack(">Q", at) + data, frame=CHUNK + 8)
            finally:
                os.close(fd)
            await pipe.close("done")

        return {"size": size, "extents": len(ranges)}, body

    async def pull(self, item: w.MoveVolume) -> None:
        """The new node's end: copy, then record the move (or why it failed)."""
        s = await self.volumes.state(item.namespace, item.name)
        if not (s.exists and s.moving_to == self.volumes.node and s.move_version == item.version):
            return  # stale, or done before (a redelivery)
        ref = Ref("volume", item.namespace, item.name)
        directory = self.volumes.path(item.namespace, item.name)
        scratch = directory / f".move-{item.version}"
        try:
            pipe, info = await connect(self.store.nc, node=item.source_node, kind="volume-read",
                                       namespace=item.namespace, name=item.name)  # fmt: skip
            try:
                await self._receive(pipe, scratch, size=int(info["size"]))
            finally:
                await pipe.close("closed by the new node")
            await asyncio.to_thread((scratch / DISK).rename, directory / DISK)
        except (VirtbusError, OSError, KeyError, ValueError) as err:
            if isinstance(err, VirtbusError):
                reason = err.message
            elif isinstance(err, OSError):  # this node's disk: full (ENOSPC), read-only...
                reason = f"node {self.volumes.node} cannot store the volume: {err.strerror or err}"
            else:
                reason = repr(err)
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            with contextlib.suppress(OSError):  # nothing of the volume is left here
                await asyncio.to_thread(directory.rmdir)
            await self.store.append_fact(ref, [m.VolumeMoveFailed(reason=reason)])
            return
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        moved = m.VolumeMoved(node=self.volumes.node, from_node=item.source_node)
        await self.store.append_fact(ref, [moved])

    async def _receive(self, pipe: Pipe, scratch: Path, *, size: int) -> None:
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
        fd = await asyncio.to_thread(os.open, scratch / DISK, os.O_WRONLY | os.O_CREAT, 0o644)
        try:

            def idle() -> VirtbusError:
                return VirtbusError(f"no data from the old node for {IDLE_S:.0f}s")

            async for frame in pipe.frames(idle_s=IDLE_S, idle=idle):
                (at,) = struct.unpack(">Q", frame[:8])
                await asyncio.to_thread(_pwrite_all, fd, frame[8:], at)
            if pipe.reason != "done":
                raise VirtbusError(f"the copy was cut short: {pipe.reason}")
            await asyncio.to_thread(os.ftruncate, fd, size)
        finally:
            os.close(fd)
