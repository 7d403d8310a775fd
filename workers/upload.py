"""Image upload into a volume, the node's side (CDI's upload server): receive, check, convert.

The client streams the file (as it is: compressed or not) over an `bus.tunnel` pipe into a
scratch directory inside the volume's directory. Only when every byte has arrived is the image
unpacked (gz, xz, tar), inspected with `qemu-img info` (format, virtual size, no backing file),
checked (`qemu-img check` for qcow2), converted to raw and moved to `disk.img` in one rename, then
`VolumeReady` is recorded. Anything else (a bad image, a client gone quiet, a closed session) ends
in `VolumeFailed` with the reason and no `disk.img`: a half volume is never marked ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import lzma
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bus.store import EventStore
from bus.tunnel import Pipe, SessionOpen
from events import model as m
from events.errors import ValidationError, VirtbusError
from events.names import Ref
from events.volumes import PENDING
from workers.sessions import Body
from workers.volumestore import DISK, VolumeStore

IDLE_S = 30.0  # a client silent this long is gone: the upload fails
FORMATS = ("raw", "qcow2", "iso")
COMPRESSIONS = ("", "gz", "xz", "tar")
COPY_CHUNK = 1 << 20


class UploadError(VirtbusError):
    """The uploaded image cannot become the volume's disk; the message says why."""


def unwritable(err: OSError) -> UploadError:
    """The node's own disk failed a write (full, read-only...): not the image's fault."""
    return UploadError(f"the node cannot store the image: {err.strerror or err}")


def _human(n: int) -> str:
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0", "")
    return str(n)


class _Unreadable(Exception):
    """Reading the archive failed: its data is bad (a write failing is the node's disk)."""


_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError)


def _copy_capped(src: IO[bytes], dst: Path, *, cap: int, what: str) -> None:
    """Copy at most `cap` bytes; more is an image too large for the volume (or a zip bomb)."""
    total = 0
    try:
        with dst.open("wb") as out:
            while True:
                try:
                    chunk = src.read(COPY_CHUNK)
                except _READ_ERRORS as err:
                    raise _Unreadable(err) from err
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise UploadError(
                        f"the unpacked {what} is larger than the volume ({_human(cap)})"
                    )
                out.write(chunk)
    except OSError as err:  # opening, writing or flushing `dst`: full (ENOSPC), read-only...
        raise unwritable(err) from err


def unpack(data: Path, *, compression: str, cap: int) -> Path:
    """The image inside `data` (itself when not compressed)."""
    if not compression:
        return data
    image = data.with_name("image")
    try:
        if compression == "tar":
            with tarfile.open(data) as tar:
                member = next((t for t in tar if t.isfile()), None)
                if member is None:
                    raise UploadError("the tar archive holds no file")
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has content
                _copy_capped(src, image, cap=cap, what=f"tar member {member.name!r}")
        else:
            opener: Callable[[Path], IO[bytes]] = gzip.open if compression == "gz" else lzma.open  # type: ignore[assignment]
            with opener(data) as src:
                _copy_capped(src, image, cap=cap, what="image")
    except (_Unreadable, *_READ_ERRORS) as err:
        raise UploadError(f"the file is not valid {compression} data: {err}") from err
    data.unlink()
    return image


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def check_summary(check: subprocess.CompletedProcess[str]) -> str:
    """qemu-img check's verdict line ("16 errors were found on the image."), else its first."""
    lines = [x for x in (check.stdout + check.stderr).splitlines() if x.strip()]
    verdict = [x for x in lines if "were found on the image" in x]
    return (verdict or lines or ["qemu-img check failed"])[0].strip()


def inspect(image: Path, *, expected: str, size: int) -> str:
    """The image's qemu-img format after every check, or an UploadError saying what is wrong."""
    probe = _qemu_img("info", "--output", "json", str(image))
    if probe.returncode != 0:
        raise UploadError(f"qemu-img cannot read the image: {probe.stderr.strip()}")
    info: dict[str, Any] = json.loads(probe.stdout)
    fmt, virtual = str(info.get("format")), int(info.get("virtual-size", 0))
    if fmt not in ("raw", "qcow2"):
        raise UploadError(f"unsupported image format {fmt!r}: use raw, qcow2 or iso")
    if expected == "qcow2" and fmt != "qcow2":
        raise UploadError(f"the file is not a qcow2 image (qemu-img sees {fmt})")
    if info.get("backing-filename"):  # it would read a file of this node's choosing
        raise UploadError("a qcow2 image with a backing file cannot be uploaded")
    if virtual > size:
        raise UploadError(f"the image's virtual size {_human(virtual)} is larger than the volume "
                          f"({_human(size)})")  # fmt: skip
    if fmt == "qcow2":
        check = _qemu_img("check", "-f", "qcow2", str(image))
        if check.returncode not in (0, 3):  # 3: leaked clusters only, harmless
            raise UploadError(f"the qcow2 image is corrupt: {check_summary(check)}")
    return fmt


def finish(scratch: Path, *, compression: str, expected: str, size: int) -> None:
    """Turn the received bytes in `scratch` into the volume's `disk.img` (raw), or raise."""
    image = unpack(scratch / "data", compression=compression, cap=size + (size >> 3) + (16 << 20))
    fmt = inspect(image, expected=expected, size=size)
    raw = scratch / "raw"
    if fmt == "qcow2":
        out = _qemu_img("convert", "-f", "qcow2", "-O", "raw", str(image), str(raw))
        if out.returncode != 0:
            raise UploadError(f"qemu-img convert failed: {out.stderr.strip()}")
        image.unlink()
    else:
        image.rename(raw)
    if expected != "iso":  # CDI grows a disk to the claim; an ISO stays as it was made
        with raw.open("r+b") as f:
            f.truncate(size)
    raw.rename(scratch.parent / DISK)


class Uploads:
    """The `upload` session handler of one node."""

    def __init__(self, volumes: VolumeStore, store: EventStore) -> None:
        self.volumes = volumes
        self.store = store
        self._active: set[Ref] = set()

    async def open(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        s = await self.volumes.state(req.namespace, req.name)
        name = f'persistentvolumeclaims "{req.name}"'
        if not s.exists:
            raise ValidationError(f"{name} not found")
        if not s.source:
            raise ValidationError(f"{name} is {s.phase} and takes no upload")
        if s.node != self.volumes.node:
            raise ValidationError(f"{name} is on node {s.node}, not {self.volumes.node}")
        if not s.source or s.phase != PENDING:
            raise ValidationError(f"{name} is {s.phase} and takes no upload")
        compression = str(req.params.get("compression", ""))
        expected = str(req.params.get("format", "raw"))
        total = int(req.params.get("bytes", -1))
        if compression not in COMPRESSIONS or expected not in FORMATS:
            raise ValidationError(f"compression {compression!r} / format {expected!r}: unknown")
        ref = Ref("volume", req.namespace, req.name)
        if ref in self._active:
            raise ValidationError(f"an upload into {name} is already in progress")
        self._active.add(ref)
        scratch = self.volumes.path(req.namespace, req.name) / f".upload-{req.sid}"

        async def body(pipe: Pipe) -> None:
            # The scratch directory goes before the outcome is recorded: whoever sees the volume
            # Failed (or Ready) sees no half-received bytes left behind.
            outcome: m.VolumeFailed | m.VolumeReady = m.VolumeReady(format="raw")
            try:
                await self._receive(pipe, scratch, total=total)
                await asyncio.to_thread(finish, scratch, compression=compression,
                                        expected=expected, size=s.size_bytes)  # fmt: skip
            except (UploadError, OSError) as err:
                # An OSError here is the node's disk (full: ENOSPC), the image's faults are named
                outcome = m.VolumeFailed(
                    reason=(err if isinstance(err, UploadError) else unwritable(err)).message
                )
            except asyncio.CancelledError:  # the worker is stopping: say so, bounded
                stopped = m.VolumeFailed(reason="upload interrupted: the node worker stopped")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.to_thread(shutil.rmtree, scratch, True), 2)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.store.append_fact(ref, [stopped]), 2)
                raise
            finally:
                self._active.discard(ref)
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            await self.store.append_fact(ref, [outcome])

        return {"idle_s": IDLE_S}, body

    async def _receive(self, pipe: Pipe, scratch: Path, *, total: int) -> None:
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
        got = 0
        f = await asyncio.to_thread((scratch / "data").open, "wb")
        try:

            def idle() -> UploadError:
                return UploadError(f"upload interrupted: no data for {IDLE_S:.0f}s")

            async for frame in pipe.frames(idle_s=IDLE_S, idle=idle):
                got += len(frame)
                await asyncio.to_thread(f.write, frame)
        finally:
            await asyncio.to_thread(f.close)
        if pipe.reason != "done":
            raise UploadError(f"upload interrupted: {pipe.reason} after {_human(got)}")
        if total >= 0 and got != total:
            raise UploadError(f"upload interrupted: {got} of {total} bytes arrived")
