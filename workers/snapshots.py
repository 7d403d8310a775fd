"""A node's snapshot store: copies of a VM's persistent volumes, taken, put back and removed.

A snapshot's copies live in `<data dir>/snapshots/<namespace>/<vm>/<snapshot>-<version>/`, one
`<volume>.img` each. They are written into a `.partial` directory that is renamed into place only
when every copy is whole, so a worker that dies mid-copy leaves nothing that looks like a
snapshot; a restore writes each volume beside its target and renames it over, so a volume is
always either the old one or the snapshot's. Copies are sparse (`cp --sparse=always`, reflinks
where the filesystem has them): a mostly empty 30 GiB disk costs what it holds.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from pathlib import Path

from events import model as m
from events import work as w
from events.errors import HypervisorError, VirtbusError
from events.names import Ref
from events.state import VMState
from workers.hypervisor import PAUSED_STATE, RUNNING_STATES, domain_name
from workers.node_context import NodeContext
from workers.volumeplan import VolumeNeed, volume_plan
from workers.volumes import Volumes


class SnapshotError(VirtbusError):
    """A snapshot or restore cannot be done; the reason names the volume."""


class NodeSnapshots:
    def __init__(self, root: Path, volumes: Volumes) -> None:
        self.root = root / "snapshots"
        self.volumes = volumes

    def dir_of(self, ref: Ref, snapshot: str, version: int) -> Path:
        return self.root / ref.namespace / ref.name / f"{snapshot}-{version}"

    def dir(self, item: w.SnapshotWork) -> Path:
        return self.dir_of(item.ref, item.snapshot, item.version)

    def _sources(self, item: w.SnapshotWork) -> dict[str, Path]:
        needs: dict[str, VolumeNeed] = {n.name: n for n in volume_plan(item.spec)}
        out = {}
        for volume in item.volumes:
            need = needs.get(volume)
            if need is None:
                raise SnapshotError(f'volume "{volume}" is not in the snapshot\'s spec')
            out[volume] = self.volumes.persistent_path(need, namespace=item.namespace)
        return out

    async def take(self, item: w.TakeSnapshot) -> int:
        """Copy the volumes; returns the bytes the copies occupy. Idempotent. A copy that fails
        (the disk is full: ENOSPC) takes its `.partial` directory with it: no space stays used."""
        final = self.dir(item)
        if not await asyncio.to_thread(final.is_dir):
            partial = final.with_name(final.name + ".partial")
            try:
                await asyncio.to_thread(_fresh_dir, partial)
                for volume, source in self._sources(item).items():
                    if not await asyncio.to_thread(source.is_file):
                        raise SnapshotError(
                            f'volume "{volume}": {source} does not exist on this node'
                        )
                    await _copy(source, partial / f"{volume}.img")
                await asyncio.to_thread(partial.rename, final)
            except (SnapshotError, OSError) as err:
                await asyncio.to_thread(shutil.rmtree, partial, True)
                if isinstance(err, OSError):
                    raise SnapshotError(f"cannot write {partial}: {err.strerror or err}") from err
                raise
        return await asyncio.to_thread(_occupied, final)

    async def restore(self, item: w.RestoreSnapshot) -> None:
        """Put every copy back over its volume, each by an atomic rename; a copy that fails
        leaves the volume as it was and no staging file behind."""
        saved = self.dir(item)
        if not await asyncio.to_thread(saved.is_dir):
            raise SnapshotError(f'snapshot "{item.snapshot}" has no copies on this node')
        for volume, target in self._sources(item).items():
            copy = saved / f"{volume}.img"
            if not await asyncio.to_thread(copy.is_file):
                raise SnapshotError(f'snapshot "{item.snapshot}" lacks volume "{volume}"')
            staging = target.with_name(f".{target.name}.restoring")
            try:
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                await _copy(copy, staging)
                await asyncio.to_thread(staging.replace, target)
            except (SnapshotError, OSError) as err:
                await asyncio.to_thread(staging.unlink, missing_ok=True)
                if isinstance(err, OSError):
                    raise SnapshotError(f"cannot restore {target}: {err.strerror or err}") from err
                raise

    async def remove(self, item: w.SnapshotWork) -> None:
        await asyncio.to_thread(shutil.rmtree, self.dir(item), True)

    def sweep(self, keep: Iterable[Path]) -> list[Path]:
        """Remove copies (and half copies) of snapshots the log no longer has; return them."""
        wanted = set(keep)
        gone = [d for d in self.root.glob("*/*/*") if d.is_dir() and d not in wanted]
        for d in gone:
            shutil.rmtree(d, ignore_errors=True)
        return gone


class Snapshotting:
    """A worker's share of snapshots: take, restore, remove, each reported as events."""

    def __init__(self, ctx: NodeContext, *, snapshots: NodeSnapshots) -> None:
        self.ctx = ctx
        self.snapshots = snapshots

    async def do(self, item: w.SnapshotWork, s: VMState) -> None:
        snap = s.snapshots.get(item.snapshot)
        current = snap is not None and snap.requested == item.version
        if isinstance(item, w.RemoveSnapshot):
            if not current:  # not made anew under that name meanwhile
                await self.snapshots.remove(item)
            return
        if not current:
            return  # stale: deleted or made anew meanwhile
        try:
            if isinstance(item, w.TakeSnapshot) and snap and snap.in_progress:
                size = await self._take(item, paused_here=s.node == self.ctx.node)
                done = m.SnapshotSucceeded(
                    snapshot=item.snapshot, node=self.ctx.node, size_bytes=size
                )
                await self.ctx.observe(item.ref, [done])
            elif isinstance(item, w.RestoreSnapshot) and s.restoring and s.restore:
                if s.restore.name != item.restore:
                    return
                state = await self.ctx.hv.state(domain_name(item.ref))
                if state in (*RUNNING_STATES, PAUSED_STATE):
                    raise SnapshotError(f"VM {item.name!r} is running on {self.ctx.node}")
                await self.snapshots.restore(item)
                ok = m.RestoreSucceeded(snapshot=item.snapshot, restore=item.restore)
                await self.ctx.observe(item.ref, [ok])
        except (SnapshotError, HypervisorError) as err:
            failed: m.Event = (
                m.RestoreFailed(snapshot=item.snapshot, restore=item.restore, reason=err.message)
                if isinstance(item, w.RestoreSnapshot)
                else m.SnapshotFailed(snapshot=item.snapshot, reason=err.message)
            )
            await self.ctx.observe(item.ref, [failed])

    async def _take(self, item: w.TakeSnapshot, *, paused_here: bool) -> int:
        """A crash-consistent copy, like KubeVirt's without a guest agent: the running domain is
        paused for the copy (our own pause and resume are not news for the log)."""
        dom = domain_name(item.ref)
        pause = paused_here and await self.ctx.hv.state(dom) in RUNNING_STATES
        if pause:
            self.ctx.expectations.expect(dom, "suspended")
            await self.ctx.hv.suspend(dom)
        try:
            return await self.snapshots.take(item)
        finally:
            if pause:
                self.ctx.expectations.expect(dom, "resumed")
                await self.ctx.hv.resume(dom)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # a dead worker's half copy
    path.mkdir(parents=True)


def _occupied(directory: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir())


async def _copy(source: Path, target: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "cp", "--sparse=always", "--reflink=auto", "--", str(source), str(target),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SnapshotError(f"copying {source}: {err.decode(errors='replace').strip()}")
