"""`virtbus image-upload`: a disk image from a file or a URL into a new volume, over the bus.

The client checks what it can before a byte moves (the format from the name and the image's own
header, the virtual size against `--pvc-size`, `qemu-img info`/`check` on a local qcow2), then
creates the volume (`source: upload`) and streams the bytes as they are, compressed or not, to the
owning node worker through an `bus.tunnel` pipe. Why a pipe and not a JetStream object store
bucket: the bytes go straight to the one node that needs them with credit-based flow control, the
server never holds a second copy of a multi-GiB image, and an interrupted upload leaves nothing on
the bus to clean up. The node unpacks, checks again (authoritatively) and converts to raw; the
verdict (`VolumeReady` or `VolumeFailed`) comes back through the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import lzma
import shutil
import struct
import subprocess
import tarfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlparse

import msgspec
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bus.client import session
from bus.tunnel import PipeClosed, connect
from events import commands as c
from events.errors import ValidationError, VirtbusError
from events.names import check_name
from events.quantity import parse_quantity
from events.volumes import BOUND, PENDING
from virtctl.volumes import until_settled, volume

FORMATS = {".img": "raw", ".raw": "raw", ".qcow2": "qcow2", ".iso": "iso"}
COMPRESSIONS = {".gz": "gz", ".xz": "xz", ".tar": "tar"}
HEAD = 0x8006  # enough for the qcow2 header and the ISO 9660 volume descriptor ("CD001")
FRAME = 128 * 1024
QCOW2_MAGIC = b"QFI\xfb"


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    format: str  # raw | qcow2 | iso
    compression: str  # "" | gz | xz | tar
    virtual_size: int | None  # None: only the node can tell (a compressed download)
    partial: bool = False  # counting stopped once past the limit: the size is at least this


def _fail(message: str, field: str = "image-path") -> ValidationError:
    return ValidationError(f"{field}: {message}", field=field)


def name_format(name: str, *, field: str = "image-path") -> tuple[str, str]:
    """(format, compression) from a file name like `disk.qcow2.xz`; format "" if a tar hides it."""
    lower, compression = name.lower(), ""
    for ext, comp in COMPRESSIONS.items():
        if lower.endswith(ext):
            lower, compression = lower.removesuffix(ext), comp
            break
    fmt = next((f for ext, f in FORMATS.items() if lower.endswith(ext)), "")
    if not fmt and not (compression == "tar"):
        raise _fail(f"unknown format of {name!r}: use .img, .qcow2 or .iso, optionally "
                    "compressed as .gz, .xz or .tar", field)  # fmt: skip
    return fmt, compression


def sniff(head: bytes, *, named: str, what: str, field: str = "image-path") -> Probe:
    """Check the image's first bytes against its name; the qcow2 header gives the virtual size."""
    if head[:4] == QCOW2_MAGIC:
        if len(head) < 48:
            raise _fail(f"{what} is a truncated qcow2 image", field)
        version, = struct.unpack(">I", head[4:8])  # fmt: skip
        cluster_bits, = struct.unpack(">I", head[20:24])  # fmt: skip
        if version not in (2, 3) or not 9 <= cluster_bits <= 21:
            raise _fail(f"{what} has a corrupt qcow2 header (version {version}, cluster_bits "
                        f"{cluster_bits})", field)  # fmt: skip
        return Probe(
            format="qcow2", compression="", virtual_size=struct.unpack(">Q", head[24:32])[0]
        )
    if named == "qcow2":
        raise _fail(f"{what} is not a qcow2 image (no qcow2 header)", field)
    iso = head[0x8001:0x8006] == b"CD001"
    if named == "iso" and not iso:
        raise _fail(f"{what} is not an ISO 9660 image (no CD001 descriptor)", field)
    return Probe(format="iso" if iso else "raw", compression="", virtual_size=None)


def _open_inner(
    path: Path, compression: str, stack: contextlib.ExitStack
) -> tuple[IO[bytes], int | None, str]:
    """The (decompressed) image stream, its size if the container says, and its name."""
    if compression == "tar":
        tar = stack.enter_context(tarfile.open(path))  # noqa: SIM115 - closed by `stack`
        member = next((t for t in tar if t.isfile()), None)
        if member is None:
            raise _fail(f"{path.name}: the tar archive holds no file")
        src = tar.extractfile(member)
        assert src is not None
        return src, member.size, member.name
    if compression == "gz":
        return cast(IO[bytes], gzip.open(path)), None, path.name
    if compression == "xz":
        return cast(IO[bytes], lzma.open(path)), None, path.name
    return path.open("rb"), path.stat().st_size, path.name


def probe_file(path: Path, *, limit: int) -> Probe:
    """Everything the client can know before copying `path`; raises naming what is wrong."""
    if not path.is_file():
        raise _fail(f"{path} is not a file")
    named, compression = name_format(path.name)
    try:
        with contextlib.ExitStack() as stack:
            src, size, inner = _open_inner(path, compression, stack)
            stack.enter_context(src)
            if not named:  # a tar named only .tar: its member's name tells the format
                named, _ = name_format(inner)
            head = src.read(HEAD)
            found = sniff(head, named=named, what=path.name)
            counted = found.virtual_size is None and size is None
            if counted:
                # Compressed raw or ISO: only a full pass tells its size; stop once too large.
                size = len(head)
                while size <= limit and (chunk := src.read(1 << 20)):
                    size += len(chunk)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError) as err:
        raise _fail(f"{path.name} is not valid {compression or 'image'} data: {err}") from err
    virtual = found.virtual_size if found.virtual_size is not None else size
    if found.format == "qcow2" and not compression and shutil.which("qemu-img"):
        virtual = _qemu_check(path)
    return Probe(
        format=found.format,
        compression=compression,
        virtual_size=virtual,
        partial=counted and virtual is not None and virtual > limit,
    )


def _qemu_check(path: Path) -> int:
    info = subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output", "json", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if info.returncode != 0:
        raise _fail(f"{path.name}: qemu-img cannot read it: {info.stderr.strip()}")
    data: dict[str, Any] = json.loads(info.stdout)
    if data.get("backing-filename"):
        raise _fail(f"{path.name} has a backing file; upload a standalone image")
    check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(path)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if check.returncode not in (0, 3):  # 3: leaked clusters only, harmless
        lines = [x for x in (check.stdout + check.stderr).splitlines() if x.strip()]
        verdict = [x for x in lines if "were found on the image" in x] or lines or ["failed"]
        raise _fail(f"{path.name} is a corrupt qcow2 image: {verdict[0].strip()}")
    return int(data.get("virtual-size", 0))


def _too_large(probe: Probe, *, size: int, pvc_size: str, what: str) -> None:
    if probe.virtual_size is not None and probe.virtual_size > size:
        virtual = f"over {size} bytes" if probe.partial else f"{probe.virtual_size} bytes"
        raise _fail(f"{what}: the image's virtual size ({virtual}) is larger than --pvc-size "
                    f"{pvc_size} ({size} bytes)")  # fmt: skip


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, FRAME * 4):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def _awaiting_upload(url: str, *, name: str, namespace: str) -> str:
    """The size of a claim that waits for its upload, or why it takes none."""
    async with session(url) as nc:
        v = await volume(nc, name, namespace)
    if not v.exists:
        raise VirtbusError(f'persistentvolumeclaims "{name}" not found; leave out --no-create to '
                           "create it")  # fmt: skip
    if v.phase != PENDING or not v.source:
        raise VirtbusError(f'persistentvolumeclaims "{name}" is {v.phase} and takes no upload; '
                           "--no-create uploads only into a claim created for one")  # fmt: skip
    return str(v.size_bytes)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
    )  # fmt: skip


async def upload(
    url: str, *, name: str, namespace: str, pvc_size: str, image_path: Path | None,
    source_url: str | None, insecure: bool, node: str | None, wait_s: float, actor: str,
    create: bool = True, data_volume: bool = False,
) -> int:  # fmt: skip
    check_name(name, field="pvc-name")
    if not create:  # `--no-create`: into a claim made for an upload that has not come yet
        pvc_size = await _awaiting_upload(url, name=name, namespace=namespace)
    size = parse_quantity(pvc_size, field="pvc-size")
    if (image_path is None) == (source_url is None):
        raise _fail("give exactly one of --image-path and --url")
    if image_path is not None:
        probe = await asyncio.to_thread(probe_file, image_path, limit=size)
        _too_large(probe, size=size, pvc_size=pvc_size, what=image_path.name)
        total = (await asyncio.to_thread(image_path.stat)).st_size
        await _send(url, name=name, namespace=namespace, pvc_size=pvc_size, node=node,
                    source="upload", probe=probe, total=total, label=image_path.name,
                    chunks=_file_chunks(image_path), wait_s=wait_s, actor=actor,
                    create=create, data_volume=data_volume)  # fmt: skip
        return 0
    assert source_url is not None
    import aiohttp

    if urlparse(source_url).scheme not in ("http", "https"):
        raise _fail(f"{source_url!r} is not an http(s) URL", "url")
    named, compression = name_format(Path(urlparse(source_url).path).name, field="url")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            resp = await http.get(source_url, ssl=not insecure)
        except aiohttp.ClientError as err:
            raise VirtbusError(f"url: cannot fetch {source_url}: {err}") from err
        async with resp:
            if resp.status != 200:
                raise VirtbusError(f"url: {source_url} answered HTTP {resp.status} {resp.reason}")
            head = b""
            while len(head) < HEAD and (chunk := await resp.content.read(HEAD - len(head))):
                head += chunk
            probe = Probe(format=named or "raw", compression=compression, virtual_size=None)
            if not compression:
                found = sniff(head, named=named, what=source_url, field="url")
                virtual = found.virtual_size
                if virtual is None and resp.content_length is not None:
                    virtual = resp.content_length
                probe = Probe(format=found.format, compression="", virtual_size=virtual)
            _too_large(probe, size=size, pvc_size=pvc_size, what=source_url)

            async def chunks() -> AsyncIterator[bytes]:
                yield head
                async for data in resp.content.iter_chunked(FRAME * 4):
                    yield data

            await _send(url, name=name, namespace=namespace, pvc_size=pvc_size, node=node,
                        source=source_url, probe=probe, total=resp.content_length,
                        label=Path(urlparse(source_url).path).name, chunks=chunks(),
                        wait_s=wait_s, actor=actor, create=create,
                        data_volume=data_volume)  # fmt: skip
    return 0


async def _send(
    url: str, *, name: str, namespace: str, pvc_size: str, node: str | None, source: str,
    probe: Probe, total: int | None, label: str, chunks: AsyncIterator[bytes], wait_s: float,
    actor: str, create: bool, data_volume: bool = False,
) -> None:  # fmt: skip
    from bus.client import send

    async with session(url) as nc:
        cmd = c.CreateVolume(name=name, namespace=namespace, size=pvc_size, node=node,
                             source=source, actor=actor, data_volume=data_volume)  # fmt: skip
        if create:
            await send(nc, cmd)
        where = (await volume(nc, name, namespace)).node
        params = {"format": probe.format, "compression": probe.compression,
                  "bytes": -1 if total is None else total}  # fmt: skip
        pipe, _ = await connect(nc, node=where, kind="upload", namespace=namespace, name=name,
                                params=params)  # fmt: skip

        async def stream(bar: Progress) -> None:
            task = bar.add_task(label, total=total)
            async for chunk in chunks:
                await pipe.send(chunk, frame=FRAME)
                bar.advance(task, len(chunk))

        cut = False  # the node ended the session before every byte was sent (its disk is full...)
        try:
            with _progress() as bar:
                # The node may end the session while the source is slow: stop reading it then.
                sending = asyncio.create_task(stream(bar), name=f"upload-{name}")
                ended = asyncio.create_task(pipe.ended.wait(), name=f"upload-{name}-ended")
                try:
                    await asyncio.wait([sending, ended], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (sending, ended):
                        t.cancel()
                    await asyncio.gather(sending, ended, return_exceptions=True)
                if sending.cancelled():
                    cut = True
                else:
                    sending.result()  # re-raises what went wrong while sending
        except PipeClosed:
            cut = True  # its verdict is in the log
        except BaseException:
            await pipe.close("interrupted by the client")
            raise
        await pipe.close("done")
        typer.echo("The node ended the upload before all data was sent, waiting for its verdict"
                   if cut else
                   "Uploading data completed successfully, waiting for processing to complete",
                   err=True)  # fmt: skip
        s = await until_settled(nc, cmd.target, timeout_s=wait_s)
    if s.phase != BOUND:
        raise VirtbusError(f'persistentvolumeclaims "{name}" upload failed: {s.reason}')
    typer.echo(f"Uploading {label} completed successfully")
