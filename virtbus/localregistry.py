"""A real OCI registry on loopback (Debian's `docker-registry`), and container disks pushed to it.

Why in the product: `virtbus up --hypervisor qemu` serves the tiny guest (`virtbus/guest/`) to its
nodes as a KubeVirt container disk, through the same pull path a registry elsewhere would take;
the tests run their registries with the same code. `registry_server(dir)` runs one registry with
its own config file and storage on a free loopback port and always stops it; `push_disk(url,
image, file)` pushes a qcow2 or raw file as `/disk/disk.img` in one gzipped layer (KubeVirt's
`ADD disk.img /disk/`) through python-dxf, as the worker pulls.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dxf import DXF

from bus.server import die_with_parent
from workers.registry import parse_image

BINARY = "docker-registry"
# Media types of a manifest, an index, a config and a gzipped layer: OCI's, and Docker's v2.2.
OCI = (
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip",
)  # fmt: skip
DOCKER = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
_LISTENING = re.compile(r"listening on \[?([0-9.:a-f]*?)\]?:(\d+)")

CONFIG = """version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
"""


@dataclass
class RegistryServer:
    """A running registry: `url` is its base URL (http://127.0.0.1:PORT), `proc` the process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def available() -> bool:
    return shutil.which(BINARY) is not None


@contextlib.contextmanager
def registry_server(root: Path, *, within: float = 20) -> Iterator[RegistryServer]:
    """A registry storing under `root`; stopped on the way out, whatever happened."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(CONFIG.format(storage=root / "storage"))
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [BINARY, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (only a prctl: safe with threads)
        )  # fmt: skip
    server = RegistryServer(url="", proc=proc, log=log)
    try:
        server.url = _wait_ready(server, within=within)
        yield server
    finally:
        server.stop()


def _wait_ready(server: RegistryServer, *, within: float) -> str:
    deadline = time.monotonic() + within
    url = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{BINARY} exited: {server.log.read_text()[-2000:]}")
        if not url and (found := _LISTENING.search(server.log.read_text())):
            url = f"http://127.0.0.1:{found.group(2)}"
        if url:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/v2/", timeout=2) as r:
                if r.status == 200:
                    return url
        time.sleep(0.05)
    raise RuntimeError(f"{BINARY} not ready within {within}s: {server.log.read_text()[-2000:]}")


# --- pushing ------------------------------------------------------------------------------------


def layer(files: dict[str, bytes | Path]) -> bytes:
    """A gzipped tar layer holding `files` (path in the image -> content or a local file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            if isinstance(content, Path):
                tar.add(str(content), arcname=name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def dxf_client(url: str, repository: str) -> DXF:
    return DXF(url.split("://", 1)[1], repository, insecure=url.startswith("http://"))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(
    url: str, image: str, layers: list[bytes | Path], *, arch: str = "amd64",
    types: tuple[str, ...] = OCI,
) -> str:  # fmt: skip
    """Push an image made of `layers` (gzipped tars, in memory or in files) under `image`, with
    OCI's media types or Docker's (`types=DOCKER`); returns its manifest's digest."""
    manifest_type, _, config_type, layer_type = types
    ref = parse_image(image)
    with dxf_client(url, ref.repository) as d:
        descriptors = []
        for data in layers:
            if isinstance(data, Path):
                digest, size = d.push_blob(filename=str(data)), data.stat().st_size
            else:
                digest, size = d.push_blob(data=iter([data]), digest=digest_of(data)), len(data)
            descriptors.append({"mediaType": layer_type, "digest": digest, "size": size})
        config = json.dumps({"architecture": arch, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()  # fmt: skip
        d.push_blob(data=iter([config]), digest=digest_of(config))
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
            "layers": descriptors,
        })  # fmt: skip
        d.set_manifest(ref.digest or ref.tag, manifest)
    return digest_of(manifest.encode())


def push_disk(url: str, image: str, disk: Path) -> str:
    """Push the qcow2 or raw file `disk` as the container disk `image`, as KubeVirt's container
    disks are built (`ADD disk.img /disk/`). Returns the image's digest."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "layer.tar.gz"

        def reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.mtime = 0
            return info

        # No timestamps in the gzip header or the tar: the same disk pushed twice is one image.
        with gzip.GzipFile(staged, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            tar.add(str(disk), arcname="disk/disk.img", filter=reproducible)
        return push_image(url, image, [staged])
