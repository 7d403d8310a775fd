"""Pulling one container disk from one registry (blocking; the image cache runs it in a thread).

The protocol (Docker Registry HTTP API v2: manifests, blobs, bearer tokens, blob digests) is
python-dxf's. What is ours is reading the manifest a KubeVirt container disk has (an image index is
narrowed to linux/amd64), checking each manifest's digest, and taking the disk file under `/disk/`
out of the layers into a directory the caller then renames into the cache. Every failure raises
`PullFailed`, saying whether the registry itself is failing (worth marking it unhealthy) or only
this image is missing or wrong there.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import lzma
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import msgspec
import requests
from dxf import DXF, DXFBase
from dxf import exceptions as dxf_errors

from workers.registry import ImageRef, Registry

INDEX_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})  # fmt: skip
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
})  # fmt: skip
PLATFORM = ("linux", "amd64")
DISK_DIR = "/disk"
QCOW2_MAGIC = b"QFI\xfb"
_CHUNK = 1 << 20


class PullFailed(Exception):
    """One registry could not provide the image; `reason` says why, for the user."""

    def __init__(self, reason: str, *, unhealthy: bool = False, not_found: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unhealthy = unhealthy  # the registry itself failed: skip it for a while
        self.not_found = not_found


class Pulled(msgspec.Struct, frozen=True):
    digest: str  # of the manifest (or index) the reference named
    disk: str  # file name in the pulled directory: disk.qcow2 or disk.img
    size_bytes: int  # layer bytes transferred (0: the digest was cached already)


class _Platform(msgspec.Struct, frozen=True):
    os: str = ""
    architecture: str = ""


class _Descriptor(msgspec.Struct, frozen=True, rename="camel"):
    digest: str
    media_type: str = ""
    size: int = 0
    platform: _Platform | None = None


class _Manifest(msgspec.Struct, frozen=True, rename="camel"):
    schema_version: int = 0
    media_type: str = ""
    layers: list[_Descriptor] = []
    manifests: list[_Descriptor] = []


def pull_disk(
    registry: Registry, image: ImageRef, *, dest: Path, timeout: float,
    cached: Callable[[str], str | None] = lambda digest: None,
) -> Pulled:  # fmt: skip
    """Pull `image` from `registry` into the (new, empty) directory `dest`; only its manifest
    when `cached(digest)` names the disk file the cache already has for that digest."""
    with _failures(timeout), DXF(
        registry.host, image.repository, auth=_anonymous, insecure=registry.insecure,
        timeout=timeout,
    ) as dxf:  # fmt: skip
        manifest, digest = _manifest(dxf, image.reference, expect=image.digest, image=image)
        if (have := cached(digest)) is not None:
            return Pulled(digest=digest, disk=have, size_bytes=0)
        if manifest.media_type in INDEX_TYPES:
            child = _pick_platform(manifest, image)
            manifest, _ = _manifest(dxf, child.digest, expect=child.digest, image=image)
        if manifest.media_type not in MANIFEST_TYPES:
            raise PullFailed(f"{image}: unsupported manifest type {manifest.media_type!r}")
        size, found = 0, False
        for layer in manifest.layers:
            if layer.media_type.endswith("+zstd"):
                raise PullFailed(f"{image}: layer {layer.digest} is zstd-compressed (unsupported)")
            got, has_disk = _layer(dxf, layer.digest, dest=dest / "disk.part", image=image)
            size += got
            found = found or has_disk
        if not found:
            raise PullFailed(
                f"{image}: no disk under {DISK_DIR}/ in its {len(manifest.layers)} layer(s) "
                "(a container disk holds one qcow2 or raw file there)"
            )
        with (dest / "disk.part").open("rb") as f:
            name = "disk.qcow2" if f.read(4) == QCOW2_MAGIC else "disk.img"
        (dest / "disk.part").rename(dest / name)
        return Pulled(digest=digest, disk=name, size_bytes=size)


def _anonymous(dxf: DXFBase, response: requests.Response) -> None:
    """A registry asking for a token gets an anonymous one (public images)."""
    dxf.authenticate(response=response)


@contextlib.contextmanager
def _failures(timeout: float) -> Iterator[None]:
    """Turn what the HTTP client and python-dxf raise into `PullFailed` with a short reason."""
    try:
        yield
    except PullFailed:
        raise
    except requests.Timeout as err:
        raise PullFailed(f"timed out after {timeout:g} s", unhealthy=True) from err
    except requests.ConnectionError as err:
        refused = "refused" in str(err).lower()
        why = "connection refused" if refused else f"cannot connect: {_short(err)}"
        raise PullFailed(why, unhealthy=True) from err
    except requests.HTTPError as err:
        code = err.response.status_code if err.response is not None else 0
        if code == 404:
            raise PullFailed("not found (HTTP 404)", not_found=True) from err
        raise PullFailed(f"HTTP {code}", unhealthy=code >= 500 or code == 429) from err
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
            requests.RequestException) as err:  # fmt: skip
        raise PullFailed(f"transfer broke off: {_short(err)}", unhealthy=True) from err
    except dxf_errors.DXFUnauthorizedError as err:
        raise PullFailed("unauthorized (HTTP 401)") from err
    except dxf_errors.DXFError as err:
        raise PullFailed(f"registry protocol error: {_short(err)}") from err


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _manifest(
    dxf: DXF, reference: str, *, expect: str | None, image: ImageRef
) -> tuple[_Manifest, str]:
    """The manifest `reference` names, with its digest checked against what was expected and
    what the registry says it is."""
    _, response = dxf.get_manifest_and_response(reference)
    content = response.content
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    told = response.headers.get("Docker-Content-Digest")
    for want in (expect, told):
        if want and want != digest:
            raise PullFailed(f"{image}: manifest {reference} has digest {digest}, expected {want}")
    try:
        manifest = msgspec.json.decode(content, type=_Manifest)
    except msgspec.DecodeError as err:
        raise PullFailed(f"{image}: invalid manifest from the registry: {err}") from err
    if manifest.schema_version != 2:
        raise PullFailed(f"{image}: unsupported manifest schemaVersion {manifest.schema_version}")
    if not manifest.media_type:  # optional in OCI: the response's type, or what the body has
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        if kind not in INDEX_TYPES | MANIFEST_TYPES:
            kind = next(iter(INDEX_TYPES if manifest.manifests else MANIFEST_TYPES))
        manifest = msgspec.structs.replace(manifest, media_type=kind)
    return manifest, digest


def _pick_platform(index: _Manifest, image: ImageRef) -> _Descriptor:
    have = []
    for entry in index.manifests:
        if entry.platform is not None:
            key = (entry.platform.os, entry.platform.architecture)
            if key == PLATFORM:
                return entry
            have.append("/".join(key))
    raise PullFailed(f"{image}: the image index has no {'/'.join(PLATFORM)} image "
                     f"(it has: {', '.join(have) or 'none'})")  # fmt: skip


class _Blob(io.RawIOBase):
    """A blob's chunks as a file, counting bytes; python-dxf checks the digest at the end."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
            self.size += len(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Read to the end, which is where a digest mismatch is raised."""
        for chunk in self._chunks:
            self.size += len(chunk)


def _layer(dxf: DXF, digest: str, *, dest: Path, image: ImageRef) -> tuple[int, bool]:
    """Stream one layer (a tar, maybe compressed) and copy the first file under /disk/ to `dest`.
    Returns the bytes transferred and whether a disk was found."""
    blob = _Blob(dxf.pull_blob(digest, chunk_size=_CHUNK))  # type: ignore[arg-type]
    found = False
    try:
        try:
            with tarfile.open(fileobj=io.BufferedReader(blob, _CHUNK), mode="r|*") as tar:
                for member in tar:
                    path = posixpath.normpath("/" + member.name)
                    if found or posixpath.dirname(path) != DISK_DIR or not member.isreg():
                        continue
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file always has a reader
                    with dest.open("wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                    found = True
            blob.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError) as err:
            blob.drain()  # a corrupt blob is reported as such, not as "not a tar"
            why = f"{image}: layer {digest} is not a readable tar archive: {err}"
            raise PullFailed(why) from err
    except dxf_errors.DXFDigestMismatchError as err:
        raise PullFailed(f"{image}: layer {digest} failed verification: {err}") from err
    return blob.size, found
