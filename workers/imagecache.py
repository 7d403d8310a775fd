"""A node's cache of container disks, by digest, filled from registries with failover.

Layout under the node's data dir: `images/by-digest/sha256/<hex>/disk.{qcow2,img}` holds each
pulled image once, `images/by-name/<name>.json` records which digest an image name (with its tag)
resolved to. A pull lands in a temp dir that is renamed into place only when complete and
verified, so a failed pull leaves no entry. A name already recorded is not pulled again (like
Kubernetes' IfNotPresent), and a new name for a digest already here costs only its manifest.
Images pre-filled by hand in `images/<name>/` (the older layout) are still found first. Each pull
is reported as an `ImagePulled` event naming the registry that served it and why the ones before
it did not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from events import model as m
from events.errors import ValidationError, VirtbusError
from workers.ocipull import Pulled, PullFailed, pull_disk
from workers.registry import REGISTRIES_ENV, ImageRef, Registries, Registry, parse_image

DISK_NAMES = ("disk.qcow2", "disk.img", "disk.raw")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
OnPull = Callable[[m.ImagePulling | m.ImagePulled], Awaitable[None]]


class ImagePullError(VirtbusError):
    """An image could not be had; `status` is the printable status the VM shows."""

    def __init__(self, message: str, *, status: str = "ErrImagePull", field: str = "") -> None:
        super().__init__(message, field=field)
        self.status = status


def legacy_dir(root: Path, image: str) -> Path:
    """Where an image pre-filled by hand lives (one directory per image name)."""
    return root / "images" / _UNSAFE.sub("_", image)


def _disk_in(directory: Path) -> Path | None:
    return next((p for n in DISK_NAMES if (p := directory / n).is_file()), None)


class ImageCache:
    def __init__(self, root: Path, registries: Registries, *, node: str = "") -> None:
        # Absolute: a disk's path becomes a qcow2 backing file, read from the overlay's directory.
        self.root = root.absolute() / "images"
        self.legacy_root = root.absolute()
        self.registries = registries
        self.node = node
        self._locks: dict[str, asyncio.Lock] = {}
        # Pulls a killed worker left half done: no pull runs before the worker is built.
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)

    def digest_dir(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "by-digest" / algorithm / hexdigest

    def _record(self, image: ImageRef) -> Path:
        name = str(image)
        safe = _UNSAFE.sub("_", name)
        tail = hashlib.sha256(name.encode()).hexdigest()[:12]  # "a/b" and "a_b" stay apart
        return self.root / "by-name" / f"{safe}-{tail}.json"

    def _cached_disk(self, digest: str) -> str | None:
        disk = _disk_in(self.digest_dir(digest))
        return None if disk is None else disk.name

    def cached(self, image: ImageRef) -> Path | None:
        """The disk of `image` if this node has it: by its pinned digest or its recorded one."""
        digest = image.digest
        if digest is None:
            try:
                digest = json.loads(self._record(image).read_text())["digest"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return _disk_in(self.digest_dir(str(digest)))

    async def ensure(
        self, image: str, *, field: str = "image", on_pull: OnPull | None = None
    ) -> Path:
        """The disk file of `image` on this node, pulled first if needed."""
        preloaded = await asyncio.to_thread(_disk_in, legacy_dir(self.legacy_root, image))
        if preloaded is not None:
            return preloaded
        try:
            ref = parse_image(image, field=field)
        except ValidationError as err:
            raise ImagePullError(err.message, field=field) from err
        async with self._locks.setdefault(str(ref), asyncio.Lock()):
            if (disk := await asyncio.to_thread(self.cached, ref)) is not None:
                return disk
            registries = self.registries.for_image(ref)
            if not registries:
                raise ImagePullError(
                    f"{field}: image {image!r} is not in this node's image cache and no "
                    f"registry is configured ({REGISTRIES_ENV})", field=field,
                )  # fmt: skip
            if on_pull is not None:  # a pull can take minutes: the VM's history says it began
                await on_pull(m.ImagePulling(image=image, node=self.node,
                                             registries=[r.url for r in registries]))  # fmt: skip
            pulled, registry, attempts, seconds = await self._failover(ref, registries, field=field)
        if on_pull is not None:
            await on_pull(m.ImagePulled(
                image=image, digest=pulled.digest, registry=registry.url, node=self.node,
                size_bytes=pulled.size_bytes, seconds=round(seconds, 3), attempts=attempts,
            ))  # fmt: skip
        return self.digest_dir(pulled.digest) / pulled.disk

    async def _failover(
        self, ref: ImageRef, registries: list[Registry], *, field: str
    ) -> tuple[Pulled, Registry, list[str], float]:
        """Ask each registry in turn. Returns what was pulled, from where, why the registries
        before it did not serve it, and how long the serving pull took."""
        notes: dict[str, str] = {}
        for registry in registries:
            if (why := self.registries.unhealthy(registry)) is not None:
                notes[registry.url] = f"skipped, unhealthy ({why})"
        # Healthy ones come first; an unhealthy one is asked only once every healthy one failed.
        for registry in registries:
            started = time.monotonic()
            try:
                pulled = await asyncio.to_thread(self._pull, registry, ref)
            except PullFailed as err:
                notes[registry.url] = err.reason
                if err.unhealthy:
                    self.registries.mark_unhealthy(registry, err.reason)
                continue
            self.registries.mark_healthy(registry)
            before = [f"{url}: {why}" for url, why in notes.items() if url != registry.url]
            return pulled, registry, before, time.monotonic() - started
        tried = "; ".join(f"{url}: {why}" for url, why in notes.items())
        raise ImagePullError(f"{field}: cannot pull {ref}: {tried}", field=field)

    def _pull(self, registry: Registry, ref: ImageRef) -> Pulled:
        """One registry's pull into a temp dir, renamed into the cache only when complete."""
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=tmp_root))
        try:
            pulled = pull_disk(registry, ref, dest=tmp, timeout=self.registries.timeout_s,
                               cached=self._cached_disk)  # fmt: skip
            final = self.digest_dir(pulled.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            if _disk_in(final) is None:
                shutil.rmtree(final, ignore_errors=True)  # a leftover without a disk
                os.rename(tmp, final)
            _write_atomically(self._record(ref), {"image": str(ref), "digest": pulled.digest,
                                                  "registry": registry.url})  # fmt: skip
            return pulled
        except OSError as err:  # our disk, not the registry: full, read-only...
            raise PullFailed(f"cannot store {ref} in {self.root}: {err}") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_atomically(path: Path, value: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(json.dumps(value))
    os.replace(part, path)
