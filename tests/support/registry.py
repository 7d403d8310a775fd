"""Real OCI registries for tests: Debian's `docker-registry` on loopback, and images pushed to it.

`registry_server(dir)` runs one registry with its own config file and storage dir on a free
loopback port and always stops it. `push_disk(url, image, file)` pushes a local qcow2 or raw file
as a KubeVirt container disk (`/disk/disk.img` in one gzipped layer) under an image name such as
`kubevirt/virtio-container-disk` (tag `latest` unless given), through python-dxf as the worker
pulls; `mirror` copies an image to another registry with skopeo. `push_image` and `push_index`
build the odd ones (indexes, Docker media types, several layers, no disk) tests need.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from virtbus.localregistry import (
    DOCKER,
    OCI,
    RegistryServer,
    available,
    digest_of,
    dxf_client,
    layer,
    push_disk,
    push_image,
    registry_server,
)
from workers.registry import parse_image

__all__ = [
    "DOCKER", "OCI", "RegistryServer", "available", "layer", "mirror", "push_disk", "push_image",
    "push_index", "registry_server", "small_qcow2",
]  # fmt: skip


def push_index(
    url: str, image: str, manifests: dict[str, str], *, types: tuple[str, ...] = OCI
) -> str:
    """Push an image index under `image`: `manifests` maps "os/arch" to a manifest digest
    already pushed to the same repository. Returns the index's digest."""
    manifest_type, index_type, _, _ = types
    ref = parse_image(image)
    with dxf_client(url, ref.repository) as d:
        entries = []
        for platform, digest in manifests.items():
            body, _ = d.get_manifest_and_response(digest)
            os_name, arch = platform.split("/")
            entries.append({"mediaType": manifest_type, "digest": digest, "size": len(body),
                            "platform": {"os": os_name, "architecture": arch}})  # fmt: skip
        index = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
        d.set_manifest(ref.tag, index)
    return digest_of(index.encode())


def mirror(src: str, dst: str, image: str) -> None:
    """Copy `image` from registry `src` to registry `dst` with skopeo, digests kept, as one
    fills a mirror."""
    ref = str(parse_image(image))
    subprocess.run(
        ["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
         "--dest-tls-verify=false", f"docker://{src.split('://', 1)[1]}/{ref}",
         f"docker://{dst.split('://', 1)[1]}/{ref}"],
        check=True, capture_output=True,
    )  # fmt: skip


def small_qcow2(path: Path, *, size: str = "16M") -> Path:
    """A small, empty qcow2 image at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path
