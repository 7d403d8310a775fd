"""A node's volumes on disk: one directory per volume holding `disk.img`, as KubeVirt expects of a
filesystem PVC.

`disk.img` appears only when the data is complete (written aside, then renamed), so a volume the
log calls `Bound` always has whole data and a crash or a failed upload never leaves a half disk a VM
could boot from. Every operation is idempotent: redelivered work finds the volume as wanted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from bus.store import EventStore
from events import model as m
from events import work as w
from events.envelope import Recorded
from events.names import Ref, aggregate_key
from events.volumes import PENDING, VolumeState, apply_volume
from workers.volumes import claim_dir

Fill = Callable[[w.ProvisionVolume], Awaitable[None]]

log = logging.getLogger("virtbus.volumes")
DISK = "disk.img"


def _blank(directory: Path, size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f".{DISK}.part"
    try:
        with part.open("wb") as f:
            f.truncate(size)  # sparse: a 1Ti volume costs nothing until written
        part.rename(directory / DISK)
    except OSError:  # too large for this filesystem, no room for its inode...: nothing stays
        part.unlink(missing_ok=True)
        raise


def _scratch_dirs(directory: Path) -> list[Path]:
    return list(directory.glob(".upload-*"))


class VolumeStore:
    def __init__(
        self, store: EventStore, *, node: str, root: Path, fill: Fill | None = None
    ) -> None:
        self.store = store
        self.node = node
        self.root = root
        self.fill = fill  # fills DataVolumes (import, registry, clone): `populate.Populator`

    def path(self, namespace: str, name: str) -> Path:
        return claim_dir(self.root, namespace, name)

    async def state(self, namespace: str, name: str) -> VolumeState:
        return await self.state_of(self.store, namespace, name)

    @staticmethod
    async def state_of(store: EventStore, namespace: str, name: str) -> VolumeState:
        s = VolumeState()
        for r in await store.read(Ref("volume", namespace, name)):
            s = apply_volume(s, r.envelope)
        return s

    async def reconcile(self) -> None:
        """On start: an upload this node was receiving when it died is over; say so and clean up
        (its client is gone with the session, and a half image must never become the disk)."""
        volumes: dict[str, VolumeState] = {}

        def on(rec: Recorded) -> None:
            key = aggregate_key(rec.subject)
            volumes[key] = apply_volume(volumes.get(key) or VolumeState(), rec.envelope)

        await self.store.replay(on, subjects=["virt.volume.>"], verify=False)
        for v in volumes.values():
            if not (v.exists and v.node == self.node and v.source and v.phase == PENDING):
                continue
            directory = self.path(v.namespace, v.name)
            scratch = await asyncio.to_thread(_scratch_dirs, directory)
            if scratch:
                for d in scratch:
                    await asyncio.to_thread(shutil.rmtree, d, True)
                failed = m.VolumeFailed(reason="upload interrupted: the node worker restarted")
                await self.store.append_fact(Ref("volume", v.namespace, v.name), [failed])

    async def do(self, item: w.ProvisionVolume | w.RemoveVolume) -> None:
        """Make or remove a volume's directory here (a move is `volumemove.Mover`'s)."""
        s = await self.state(item.namespace, item.name)
        mine = s.exists and s.node == self.node
        directory = self.path(item.namespace, item.name)
        match item:
            case w.ProvisionVolume():
                if (not mine or s.created_version != item.version or s.phase != PENDING
                        or s.restarts != item.attempt):  # fmt: skip
                    return  # stale, or done before (a redelivery, a failed try's)
                if item.source.startswith(("import:", "registry:", "clone:")):
                    if self.fill is None:
                        raise RuntimeError("this node has no populator for DataVolumes")
                    await self.fill(item)  # the node fetches it itself
                    return
                if item.source:  # the data comes from an upload session
                    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
                    return
                try:
                    await asyncio.to_thread(_blank, directory, item.size_bytes)
                except OSError as err:
                    await self.store.append_fact(
                        item.ref, [m.VolumeFailed(reason=f"cannot create {directory}: {err}")]
                    )
                    return
                await self.store.append_fact(item.ref, [m.VolumeReady(format="raw")])
            case w.RemoveVolume():
                if mine:
                    return  # created again here since: that directory is the new volume's
                await asyncio.to_thread(shutil.rmtree, directory, True)
