"""Container disks pulled from real registries (Debian's docker-registry on loopback) into a
node's cache, with failover between registries, and every kind of bad answer a registry can give.

Registries that must answer garbage are a tiny HTTP server of the test's own; everything else is
a real registry holding images the test pushed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
from registry import (
    DOCKER,
    RegistryServer,
    available,
    layer,
    mirror,
    push_disk,
    push_image,
    push_index,
    registry_server,
    small_qcow2,
)

from events import model as m
from events.envelope import seal
from events.errors import ValidationError
from events.names import Ref
from events.state import fold
from workers.imagecache import ImageCache, ImagePullError
from workers.registry import Registries, parse_image, parse_registries

IMAGE = "kubevirt/virtio-container-disk"


@pytest.fixture
def two_registries(tmp_path: Path) -> Iterator[tuple[RegistryServer, RegistryServer]]:
    assert available(), "docker-registry is missing: run `make setup`"
    with registry_server(tmp_path / "reg-a") as a, registry_server(tmp_path / "reg-b") as b:
        yield a, b


class Pulls:
    """What the cache reports: the `on_pull` callback of the worker, collected."""

    def __init__(self) -> None:
        self.events: list[m.ImagePulled] = []
        self.starts: list[m.ImagePulling] = []

    async def __call__(self, event: m.ImagePulling | m.ImagePulled) -> None:
        if isinstance(event, m.ImagePulling):
            self.starts.append(event)
        else:
            self.events.append(event)


def cache_of(
    tmp_path: Path, *urls: str, unhealthy_s: float = 30, timeout_s: float = 5
) -> ImageCache:
    registries = Registries(parse_registries(",".join(urls)), unhealthy_s=unhealthy_s,
                            timeout_s=timeout_s)  # fmt: skip
    return ImageCache(tmp_path / "node", registries, node="node-a")


def cache_files(cache: ImageCache) -> list[str]:
    """Every file the cache holds: after a failed pull there must be none (no half entry)."""
    return sorted(str(p.relative_to(cache.root)) for p in cache.root.rglob("*") if p.is_file())


# --- configuration and names ---------------------------------------------------------------------


def test_image_names_parse_as_docker_reads_them() -> None:
    assert str(parse_image(IMAGE)) == f"{IMAGE}:latest"
    ref = parse_image("127.0.0.1:5000/a/b:v1")
    assert (ref.host, ref.repository, ref.tag) == ("127.0.0.1:5000", "a/b", "v1")
    assert parse_image(f"docker.io/{IMAGE}:v2").host is None  # the configured list serves it
    pinned = parse_image(f"{IMAGE}@sha256:{'a' * 64}")
    assert pinned.reference == f"sha256:{'a' * 64}"


@pytest.mark.parametrize(("name", "why"), [
    ("Kubevirt/Disk", "invalid repository name"),
    ("disk:bad tag", "invalid tag"),
    ("disk@sha256:123", "digest must be sha256:<64 hex>"),
])  # fmt: skip
def test_a_bad_image_name_is_refused_naming_the_field(name: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_image(name, field="spec.volumes[0].containerDisk.image")
    assert why in err.value.message
    assert err.value.message.startswith("spec.volumes[0].containerDisk.image: ")


@pytest.mark.parametrize(("value", "why"), [
    ("http://registry.example:5000", "plain http:// is only allowed for loopback"),
    ("ftp://127.0.0.1", "is not an http(s):// base URL"),
    ("https://mirror.example/v2/", "must be a bare base URL"),
])  # fmt: skip
def test_a_bad_registry_list_is_refused(value: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_registries(value)
    assert why in err.value.message and "VIRTBUS_REGISTRIES" in err.value.message


@pytest.mark.parametrize(("args", "env", "why"), [
    (["--registries", "http://registry.example"], {}, "plain http:// is only allowed for loopback"),
    ([], {"VIRTBUS_REGISTRIES": "nope"}, "VIRTBUS_REGISTRIES: 'nope' is not an http(s)://"),
    ([], {"VIRTBUS_REGISTRY_TIMEOUT_SECONDS": "soon"}, "'soon' is not a number of seconds"),
])  # fmt: skip
def test_a_worker_with_a_bad_registry_setting_does_not_start(
    args: list[str], env: dict[str, str], why: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workers", "--node", "n", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert why in done.stderr


def test_registries_keep_their_priority_order() -> None:
    regs = parse_registries(" http://127.0.0.1:1 , https://mirror.example ,http://[::1]:2,")
    assert [r.url for r in regs] == [
        "http://127.0.0.1:1",
        "https://mirror.example",
        "http://[::1]:2",
    ]
    assert [r.insecure for r in regs] == [True, False, True]


# --- pulls from real registries ------------------------------------------------------------------


async def test_a_pull_lands_in_the_cache_by_digest_and_is_not_pulled_again(
    tmp_path: Path, two_registries: tuple[RegistryServer, RegistryServer]
) -> None:
    a, _ = two_registries
    disk = small_qcow2(tmp_path / "disk.qcow2")
    digest = push_disk(a.url, IMAGE, disk)
    cache, pulls = cache_of(tmp_path, a.url), Pulls()
    path = await cache.ensure(IMAGE, on_pull=pulls)
    assert path == cache.digest_dir(digest) / "disk.qcow2"  # a qcow2 keeps its format
    assert path.read_bytes() == disk.read_bytes()
    [event] = pulls.events
    assert (event.image, event.digest, event.registry) == (IMAGE, digest, a.url)
    assert event.node == "node-a"
    assert event.size_bytes > 0 and event.attempts == []
    record = json.loads(next((cache.root / "by-name").iterdir()).read_text())
    assert record["digest"] == digest
    push_disk(a.url, f"{IMAGE}:same", disk)  # another name for the same image
    assert await cache.ensure(f"{IMAGE}:same", on_pull=pulls) == path
    assert (pulls.events[1].digest, pulls.events[1].size_bytes) == (digest, 0)  # no blob pulled
    a.stop()  # the registry is gone: the cached names are served without asking it
    assert await cache.ensure(IMAGE, on_pull=pulls) == path
    assert await cache.ensure(f"{IMAGE}@{digest}", on_pull=pulls) == path
    assert len(pulls.events) == 2
    # Each pull was announced before it began; the cached ones were not.
    begun = m.ImagePulling(image=IMAGE, node="node-a", registries=[a.url])
    assert pulls.starts == [begun, msgspec.structs.replace(begun, image=f"{IMAGE}:same")]


async def test_failover_to_the_next_registry_and_unhealthy_marking(
    tmp_path: Path, two_registries: tuple[RegistryServer, RegistryServer]
) -> None:
    a, b = two_registries
    disks = {}
    for size, tag in enumerate(("v1", "v2", "v3"), start=16):
        disks[tag] = small_qcow2(tmp_path / f"{tag}.qcow2", size=f"{size}M")
        push_disk(a.url, f"{IMAGE}:{tag}", disks[tag])
        mirror(a.url, b.url, f"{IMAGE}:{tag}")  # b mirrors a, filled by skopeo
    cache, pulls = cache_of(tmp_path, a.url, b.url), Pulls()
    await cache.ensure(f"{IMAGE}:v1", on_pull=pulls)
    assert pulls.events[-1].registry == a.url  # the first in priority order serves
    a.stop()  # mid-test: the first registry dies
    await cache.ensure(f"{IMAGE}:v2", on_pull=pulls)
    assert pulls.events[-1].registry == b.url
    assert pulls.events[-1].attempts == [f"{a.url}: connection refused"]
    await cache.ensure(f"{IMAGE}:v3", on_pull=pulls)  # the dead one is not asked again for now
    assert pulls.events[-1].registry == b.url
    assert pulls.events[-1].attempts == [f"{a.url}: skipped, unhealthy (connection refused)"]
    v3 = cache.digest_dir(pulls.events[-1].digest) / "disk.qcow2"
    assert v3.read_bytes() == disks["v3"].read_bytes()
    assert len({e.digest for e in pulls.events}) == 3


async def test_an_unhealthy_mark_expires(tmp_path: Path) -> None:
    with registry_server(tmp_path / "reg") as reg:
        push_disk(reg.url, IMAGE, small_qcow2(tmp_path / "disk.qcow2"))
        with silent_port() as dead:  # answers nothing: a timeout
            cache, pulls = cache_of(tmp_path, dead, reg.url, unhealthy_s=0, timeout_s=1), Pulls()
            await cache.ensure(IMAGE, on_pull=pulls)
            await cache.ensure(f"{IMAGE}@{pulls.events[0].digest}", on_pull=pulls)  # cached
            (cache.root / "by-name").rename(cache.root / "forgotten")
            await cache.ensure(IMAGE, on_pull=pulls)  # pulled again: the mark has expired
    assert [e.registry for e in pulls.events] == [reg.url, reg.url]
    assert [e.attempts for e in pulls.events] == [[f"{dead}: timed out after 1 s"]] * 2


async def test_a_404_moves_on_without_marking_the_registry(
    tmp_path: Path, two_registries: tuple[RegistryServer, RegistryServer]
) -> None:
    a, b = two_registries
    disk = small_qcow2(tmp_path / "disk.qcow2")
    push_disk(b.url, f"{IMAGE}:only-on-b", disk)
    push_disk(a.url, f"{IMAGE}:on-a", disk)
    cache, pulls = cache_of(tmp_path, a.url, b.url), Pulls()
    await cache.ensure(f"{IMAGE}:only-on-b", on_pull=pulls)
    assert pulls.events[-1].registry == b.url
    assert pulls.events[-1].attempts == [f"{a.url}: not found (HTTP 404)"]
    await cache.ensure(f"{IMAGE}:on-a", on_pull=pulls)
    assert (pulls.events[-1].registry, pulls.events[-1].attempts) == (a.url, [])


async def test_an_image_index_is_narrowed_to_linux_amd64(tmp_path: Path) -> None:
    with registry_server(tmp_path / "reg") as reg:
        arm = push_image(reg.url, f"{IMAGE}:arm", [layer({"disk/disk.img": b"arm" * 100})],
                         arch="arm64")  # fmt: skip
        amd = push_image(reg.url, f"{IMAGE}:amd", [layer({"disk/disk.img": b"amd" * 100})])
        index = push_index(reg.url, f"{IMAGE}:multi", {"linux/arm64": arm, "linux/amd64": amd})
        only_arm = push_index(reg.url, f"{IMAGE}:arm-only", {"linux/arm64": arm})
        cache, pulls = cache_of(tmp_path, reg.url), Pulls()
        path = await cache.ensure(f"{IMAGE}:multi", on_pull=pulls)
        with pytest.raises(ImagePullError) as err:
            await cache.ensure(f"{IMAGE}:arm-only")
    assert path.read_bytes() == b"amd" * 100 and path.name == "disk.img"
    assert pulls.events[0].digest == index  # the image is known by what its name points at
    assert "no linux/amd64 image (it has: linux/arm64)" in err.value.message
    files = cache_files(cache)  # the index's image, its name, and nothing of the arm-only one
    assert files[0] == f"by-digest/sha256/{index.removeprefix('sha256:')}/disk.img"
    assert len(files) == 2 and files[1].startswith("by-name/kubevirt_virtio-container-disk_multi-")
    assert only_arm.removeprefix("sha256:") not in " ".join(files)


async def test_docker_media_types_work_as_oci_ones(tmp_path: Path) -> None:
    with registry_server(tmp_path / "reg") as reg:
        one = push_image(reg.url, f"{IMAGE}:one", [layer({"disk/d.img": b"docker"})],
                         types=DOCKER)  # fmt: skip
        push_index(reg.url, f"{IMAGE}:list", {"linux/amd64": one}, types=DOCKER)
        cache, pulls = cache_of(tmp_path, reg.url), Pulls()
        assert (await cache.ensure(f"{IMAGE}:one", on_pull=pulls)).read_bytes() == b"docker"
        assert (await cache.ensure(f"{IMAGE}:list", on_pull=pulls)).read_bytes() == b"docker"
    assert pulls.events[0].digest == one != pulls.events[1].digest


async def test_the_last_layer_with_a_disk_wins(tmp_path: Path) -> None:
    with registry_server(tmp_path / "reg") as reg:
        push_image(reg.url, IMAGE, [layer({"disk/disk.img": b"old", "etc/x": b"x"}),
                                    layer({"./disk/new.img": b"new"})])  # fmt: skip
        path = await cache_of(tmp_path, reg.url).ensure(IMAGE)
    assert path.read_bytes() == b"new"


# --- bad input: each a clear ErrImagePull and no cache entry --------------------------------------


async def test_an_unknown_image_names_every_registry_asked(
    tmp_path: Path, two_registries: tuple[RegistryServer, RegistryServer]
) -> None:
    a, b = two_registries
    cache = cache_of(tmp_path, a.url, b.url)
    with pytest.raises(ImagePullError) as err:
        await cache.ensure("nobody/nothing:v9", field="spec.volumes[1].containerDisk.image")
    assert err.value.status == "ErrImagePull"
    assert err.value.message == (
        "spec.volumes[1].containerDisk.image: cannot pull nobody/nothing:v9: "
        f"{a.url}: not found (HTTP 404); {b.url}: not found (HTTP 404)"
    )
    assert cache_files(cache) == []


async def test_an_image_without_a_disk_is_refused(tmp_path: Path) -> None:
    with registry_server(tmp_path / "reg") as reg:
        push_image(reg.url, IMAGE, [layer({"etc/hostname": b"x", "disk-not/disk.img": b"y"})])
        cache = cache_of(tmp_path, reg.url)
        with pytest.raises(ImagePullError) as err:
            await cache.ensure(IMAGE)
    assert f"{reg.url}: {IMAGE}:latest: no disk under /disk/ in its 1 layer(s)" in err.value.message
    assert cache_files(cache) == []


async def test_no_registry_configured_and_not_cached(tmp_path: Path) -> None:
    with pytest.raises(ImagePullError) as err:
        await cache_of(tmp_path).ensure(IMAGE, field="f")
    assert err.value.message == (
        f"f: image '{IMAGE}' is not in this node's image cache and no registry is configured "
        "(VIRTBUS_REGISTRIES)"
    )


async def test_an_invalid_image_name_is_refused_before_any_registry_is_asked(
    tmp_path: Path,
) -> None:
    with pytest.raises(ImagePullError) as err:
        await cache_of(tmp_path, "http://127.0.0.1:1").ensure("Bad Name", field="f")
    assert err.value.status == "ErrImagePull"
    assert "127.0.0.1:1" not in err.value.message
    assert "f: 'Bad Name': invalid repository name" in err.value.message


# A registry of the test's own that answers whatever it is told to, per path.
Routes = dict[str, tuple[int, str, bytes]]


@contextlib.contextmanager
def fake_registry(routes: Routes, *, cut: frozenset[str] = frozenset()) -> Iterator[str]:
    """Answers `routes`; a path in `cut` promises twice the bytes it sends, then hangs up."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, body = routes.get(self.path, (404, "text/plain", b"not here"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body) * (2 if self.path in cut else 1)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-registry", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def silent_port() -> Iterator[str]:
    """A port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PATH = f"/v2/{IMAGE}/manifests/latest"


async def test_a_registry_answering_garbage(tmp_path: Path) -> None:
    routes: Routes = {PATH: (200, MANIFEST, b"{this is not json")}
    with fake_registry(routes) as url:
        cache = cache_of(tmp_path, url)
        with pytest.raises(ImagePullError) as err:
            await cache.ensure(IMAGE)
        routes[PATH] = (200, MANIFEST, b'{"schemaVersion": 2, "layers": "many"}')
        with pytest.raises(ImagePullError) as wrong_shape:
            await cache.ensure(IMAGE)
    assert f"{url}: {IMAGE}:latest: invalid manifest from the registry: JSON is malformed" in (
        err.value.message
    )
    assert "Expected `array`, got `str` - at `$.layers`" in wrong_shape.value.message
    assert cache_files(cache) == []


async def test_a_corrupt_blob_fails_its_digest_check(tmp_path: Path) -> None:
    good = layer({"disk/disk.img": b"good"})
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
         "size": len(good)}]}).encode()  # fmt: skip
    routes: Routes = {
        PATH: (200, MANIFEST, manifest),
        f"/v2/{IMAGE}/blobs/{digest}": (200, "application/octet-stream", layer({"x": b"evil"})),
    }
    with fake_registry(routes) as url:
        cache = cache_of(tmp_path, url)
        with pytest.raises(ImagePullError) as err:
            await cache.ensure(IMAGE)
    why = f"{url}: {IMAGE}:latest: layer {digest} failed verification: expected digest {digest}"
    assert why in err.value.message
    assert cache_files(cache) == []


async def test_a_transfer_cut_short_marks_the_registry_unhealthy(tmp_path: Path) -> None:
    good = layer({"disk/disk.img": b"good" * 1000})
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
         "size": len(good)}]}).encode()  # fmt: skip
    blob = f"/v2/{IMAGE}/blobs/{digest}"
    routes: Routes = {PATH: (200, MANIFEST, manifest), blob: (200, "application/gzip", good)}
    with fake_registry(routes, cut=frozenset({blob})) as url:
        cache = cache_of(tmp_path, url)
        with pytest.raises(ImagePullError) as err:
            await cache.ensure(IMAGE)
    assert f"{url}: transfer broke off: " in err.value.message
    assert cache.registries.unhealthy(cache.registries.registries[0]) is not None
    assert cache_files(cache) == []


def test_a_pull_a_killed_worker_left_half_done_is_swept(tmp_path: Path) -> None:
    leftover = tmp_path / "node" / "images" / ".tmp" / "abc"
    leftover.mkdir(parents=True)
    (leftover / "disk.part").write_bytes(b"half")
    cache = cache_of(tmp_path)
    assert cache_files(cache) == []


async def test_a_failing_registry_is_marked_unhealthy(tmp_path: Path) -> None:
    with fake_registry({PATH: (503, "text/plain", b"down for maintenance")}) as url:
        cache = cache_of(tmp_path, url, "http://127.0.0.1:1")
        for _ in range(2):
            with pytest.raises(ImagePullError) as err:
                await cache.ensure(IMAGE)
    # Every registry is unhealthy by the second pull: each is still tried, as a last resort.
    assert err.value.message.endswith(f"{url}: HTTP 503; http://127.0.0.1:1: connection refused")
    assert cache.registries.unhealthy(cache.registries.registries[0]) == "HTTP 503"


def test_the_fold_takes_a_pull_as_an_observation_that_changes_no_status() -> None:
    ref = Ref.vm("a")
    events: list[m.Event] = [
        m.VMCreated(spec={}, run_strategy="Manual"), m.VMStartRequested(),
        m.VMScheduled(node="n1", vmi_uid="u"),
        m.ImagePulled(image=IMAGE, digest="sha256:" + "0" * 64, registry="http://127.0.0.1:1"),
    ]  # fmt: skip
    sealed = [seal(e, ref=ref, version=v, prevhash="", source="/t")[0]
              for v, e in enumerate(events, start=1)]  # fmt: skip
    before, after = fold(sealed[:-1]), fold(sealed)
    assert (after.status, after.phase, after.node) == (before.status, before.phase, before.node)
    assert after.version == 4
