"""A DataVolume's data fetched by the node itself: CDI's importer (http, registry) and cloner (pvc).

The bytes land in a scratch directory inside the claim's directory (named like an upload's, so a
worker that restarts mid-import finds it and records the claim `Failed`, as for an upload), go
through the same unpack/inspect/convert as an upload (`workers.upload.finish`), and only then
become `disk.img`. How far it got is recorded as `VolumeProgress` events ("45.20%", CDI's form),
a few per import, never one per chunk; the end is `VolumeReady`, or `VolumePopulationFailed` with
the reason: as CDI restarts a failed importer pod, the controller sends the fill again after a
back-off (a URL that answers later, a registry that comes back), and the DataVolume counts it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from bus.store import EventStore
from events import model as m
from events import work as w
from events.errors import VirtbusError
from events.names import Ref
from events.volumes import clone_of
from workers.imagecache import ImageCache
from workers.upload import COPY_CHUNK, UploadError, finish, unwritable
from workers.volumes import claim_dir

SCRATCH = ".upload-import"  # `VolumeStore.reconcile` fails a claim whose worker died mid-way
PROGRESS_EVERY_S = 1.0  # at most one progress event a second...
PROGRESS_STEP = 10.0  # ...unless it moved this many points


def _kind_of(path: str) -> tuple[str, str]:
    """(format, compression) by the file name's suffixes, as CDI's importer sniffs them."""
    suffixes = [s.lower() for s in PurePosixPath(path).suffixes]
    compression = ""
    if suffixes and suffixes[-1] in (".gz", ".xz", ".tar"):
        compression = suffixes.pop().lstrip(".")
    return ("iso" if suffixes and suffixes[-1] == ".iso" else "raw"), compression


class Progress:
    """Records `VolumeProgress` for one claim, throttled."""

    def __init__(self, store: EventStore, ref: Ref) -> None:
        self.store, self.ref = store, ref
        self._last_at, self.last = 0.0, -PROGRESS_STEP

    async def report(self, done: int, total: int | None, *, force: bool = False) -> None:
        if not total and not force:
            return  # no length given: CDI says N/A, and so do we until the end
        pct = 100.0 * done / total if total else 0.0
        now = time.monotonic()
        if force or now - self._last_at >= PROGRESS_EVERY_S or pct - self.last >= PROGRESS_STEP:
            self._last_at, self.last = now, pct
            await self.store.append_fact(self.ref, [m.VolumeProgress(progress=f"{pct:.2f}%")])


class Populator:
    def __init__(self, store: EventStore, *, root: Path, images: ImageCache) -> None:
        self.store = store
        self.root = root
        self.images = images

    async def fill(self, item: w.ProvisionVolume) -> None:
        """Fetch the claim's data (`item.source`: import:URL, registry:IMAGE, clone:[NS/]NAME)."""
        scratch = claim_dir(self.root, item.namespace, item.name) / SCRATCH
        progress = Progress(self.store, item.ref)
        kind, _, arg = item.source.partition(":")
        outcome: m.VolumeReady | m.VolumePopulationFailed = m.VolumeReady(format="raw")
        try:
            await asyncio.to_thread(shutil.rmtree, scratch, True)  # a redelivery starts afresh
            await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
            await progress.report(0, None, force=True)
            expected, compression = "raw", ""
            if kind == "import":
                expected, compression = _kind_of(urlparse(arg).path)
                await self._http(arg, scratch / "data", progress=progress)
            elif kind == "registry":
                disk = await self.images.ensure(arg, field="spec.source.registry.url")
                await asyncio.to_thread(_copy, disk, scratch / "data")
            else:
                ns, name = clone_of(item.source, item.namespace)  # maybe another namespace's
                source = claim_dir(self.root, ns, name) / "disk.img"
                await asyncio.to_thread(_copy, source, scratch / "data")
            await asyncio.to_thread(finish, scratch, compression=compression, expected=expected,
                                    size=item.size_bytes)  # fmt: skip
        except UploadError as err:
            outcome = m.VolumePopulationFailed(reason=err.message)
        except VirtbusError as err:  # an image that cannot be pulled, a source gone
            outcome = m.VolumePopulationFailed(reason=err.message)
        except OSError as err:
            outcome = m.VolumePopulationFailed(reason=unwritable(err).message)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        await self.store.append_fact(item.ref, [outcome])

    async def _http(self, url: str, dest: Path, *, progress: Progress) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
                if resp.status != 200:
                    raise VirtbusError(f"Unable to connect to http data source: expected status "
                                       f"code 200, got {resp.status}. Status: {resp.status} "
                                       f"{resp.reason}")  # fmt: skip
                total, done = resp.content_length, 0
                f = await asyncio.to_thread(dest.open, "wb")
                buffer = bytearray()  # written a MiB at a time: a thread hop per 64 KiB read
                try:  # cost more than the bytes
                    async for chunk in resp.content.iter_chunked(COPY_CHUNK):
                        buffer += chunk
                        if len(buffer) >= COPY_CHUNK:
                            await asyncio.to_thread(f.write, bytes(buffer))
                            done += len(buffer)
                            buffer.clear()
                            await progress.report(done, total)
                    await asyncio.to_thread(f.write, bytes(buffer))
                    done += len(buffer)
                finally:
                    await asyncio.to_thread(f.close)
                if total is not None and done != total:
                    raise VirtbusError(f"the import stopped after {done} of {total} bytes")
                await progress.report(done, total, force=progress.last < 100.0)
        except aiohttp.ClientError as err:
            raise VirtbusError(f"Unable to connect to http data source: {err}") from err


def _copy(src: Path, dst: Path) -> None:
    """A sparse copy (holes stay holes), as `cp` makes it."""
    if not src.is_file():
        raise VirtbusError(f"the source {src.name} is not there on this node")
    out = subprocess.run(["cp", "--sparse=always", str(src), str(dst)], capture_output=True,
                         text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        raise OSError(out.stderr.strip() or f"cp exited {out.returncode}")
