"""`virtbus image-upload` end to end: the CLI as a subprocess streams over the bus to a node worker
(libvirt's test driver) that checks, converts and records the volume. `--url` imports from a real
aiohttp server on loopback. Assertions read the CLI's output and exit code, the volume's history
and the node's files; every bad input ends with a clear message and no volume marked ready.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import lzma
import os
import signal
import struct
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pycdlib
import pytest
from aiohttp import web
from clirun import CLI, Result, cli_env, virtbus
from driverstack import Stack
from images import make_qcow2, pattern
from paths import ROOT

from events.names import Ref
from events.volumes import BOUND, FAILED, VolumeState, apply_volume

MiB = 1 << 20


async def upload(st: Stack, *args: str) -> Result:
    return await virtbus("image-upload", *args, "--server", st.url)


async def volume(st: Stack, name: str) -> VolumeState:
    s = VolumeState()
    for r in await st.store.read(Ref("volume", "default", name)):
        s = apply_volume(s, r.envelope)
    return s


def disk(st: Stack, name: str, node: str = "node-a") -> Path:
    return st.node_dir(node) / "volumes" / "default" / name / "disk.img"


def failed(result: Result, *words: str) -> None:
    assert result.code == 1, f"exit {result.code}: {result.out} {result.err}"
    for w in words:
        assert w in result.err, result.err


def make_iso(path: Path) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="BOOT")
    text = b"hello from the iso\n"
    iso.add_fp(io.BytesIO(text), len(text), "/HELLO.TXT;1")
    iso.write(str(path))
    iso.close()
    return path.read_bytes()


def corrupt_qcow2(path: Path) -> None:
    """Garbage over the first L2 table: the header reads fine, the data mapping does not."""
    d = bytearray(path.read_bytes())
    l1 = struct.unpack(">Q", d[40:48])[0]
    l2 = struct.unpack(">Q", d[l1 : l1 + 8])[0] & ((1 << 56) - 1) & ~511
    d[l2 : l2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(d))


async def test_raw_qcow2_iso_and_compressed_uploads_become_raw_volumes(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.node("node-a")
    data = pattern(3 * MiB)
    img = tmp_path / "disk.img"
    img.write_bytes(data)
    result = await upload(stack, "--image-path", str(img), "--pvc-name", "raw", "--pvc-size",
                          "8Mi")  # fmt: skip
    assert result.code == 0, result.err
    assert result.out == "Uploading disk.img completed successfully\n"
    assert "3.0/3.0 MiB" in result.err  # the progress bar, bytes of bytes
    assert "Uploading data completed successfully" in result.err
    got = disk(stack, "raw").read_bytes()
    assert len(got) == 8 * MiB and got[: len(data)] == data  # grown to the claim, like CDI
    s = await volume(stack, "raw")
    assert (s.phase, s.format, s.source, s.node) == (BOUND, "raw", "upload", "node-a")

    qcow = make_qcow2(tmp_path, "disk.qcow2", data)
    xz = tmp_path / "disk.qcow2.xz"
    xz.write_bytes(lzma.compress(qcow.read_bytes()))
    gz = tmp_path / "disk.img.gz"
    gz.write_bytes(gzip.compress(data))
    iso_path = tmp_path / "boot.iso"
    iso_bytes = make_iso(iso_path)
    tar = tmp_path / "boot.iso.tar"
    with tarfile.open(tar, "w") as t:
        t.add(iso_path, arcname="boot.iso")
    for name, path in (("qcow", qcow), ("qcow-xz", xz), ("img-gz", gz)):
        (await upload(stack, "--image-path", str(path), "--pvc-name", name, "--pvc-size",
                      "4Mi")).ok()  # fmt: skip
        got = disk(stack, name).read_bytes()
        assert len(got) == 4 * MiB and got[: len(data)] == data, name
    (await upload(stack, "--image-path", str(tar), "--pvc-name", "iso", "--pvc-size", "1Mi")).ok()
    assert disk(stack, "iso").read_bytes() == iso_bytes  # an ISO is kept byte for byte
    assert not list(disk(stack, "iso").parent.glob(".upload-*"))  # the scratch space is gone


async def test_bad_images_are_refused_with_a_reason_and_leave_no_ready_volume(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.node("node-a")
    data = pattern(3 * MiB)
    (tmp_path / "disk.vmdk").write_bytes(data)
    (tmp_path / "big.img").write_bytes(data)
    (tmp_path / "fake.qcow2").write_bytes(data)
    (tmp_path / "fake.iso").write_bytes(data)
    (tmp_path / "bad.img.gz").write_bytes(b"this is not gzip data at all")
    make_qcow2(tmp_path, "huge.qcow2", pattern(MiB) + bytes(63 * MiB))
    corrupt = make_qcow2(tmp_path, "corrupt.qcow2", data)
    corrupt_qcow2(corrupt)
    cases = [
        ("disk.vmdk", "4Mi", "unknown format of 'disk.vmdk': use .img, .qcow2 or .iso"),
        ("big.img", "2Mi", "virtual size (3145728 bytes) is larger than --pvc-size 2Mi"),
        ("huge.qcow2", "8Mi", "virtual size (67108864 bytes) is larger than --pvc-size 8Mi"),
        ("fake.qcow2", "8Mi", "fake.qcow2 is not a qcow2 image"),
        ("fake.iso", "8Mi", "fake.iso is not an ISO 9660 image"),
        ("bad.img.gz", "8Mi", "bad.img.gz is not valid gz data"),
        ("corrupt.qcow2", "8Mi", "corrupt.qcow2 is a corrupt qcow2 image"),
        ("missing.img", "8Mi", "is not a file"),
    ]
    for i, (name, size, reason) in enumerate(cases):
        result = await upload(stack, "--image-path", str(tmp_path / name), "--pvc-name",
                              f"bad-{i}", "--pvc-size", size)  # fmt: skip
        failed(result, f"error: image-path: {reason}" if "unknown" in reason else reason)
        assert not (await volume(stack, f"bad-{i}")).exists  # refused before any volume existed
    usage = await upload(stack, "--image-path", str(tmp_path / "big.img"), "--pvc-name", "x")
    assert (usage.code, usage.err) == (2, "error: --pvc-size is required\n")

    # Caught only on the node, after the copy (the client cannot see into a compressed qcow2):
    # the volume ends Failed with qemu-img's verdict, and no disk.img.
    gz = tmp_path / "corrupt.qcow2.gz"
    gz.write_bytes(gzip.compress(corrupt.read_bytes()))
    result = await upload(stack, "--image-path", str(gz), "--pvc-name", "late", "--pvc-size",
                          "8Mi")  # fmt: skip
    failed(result, 'persistentvolumeclaims "late" upload failed: the qcow2 image is corrupt:',
           "errors were found on the image")  # fmt: skip
    s = await volume(stack, "late")
    assert s.phase == FAILED and "corrupt" in s.reason
    assert not disk(stack, "late").exists()
    assert not list(disk(stack, "late").parent.glob(".upload-*"))
    big_gz = tmp_path / "big.img.gz"
    big_gz.write_bytes(gzip.compress(data))
    result = await upload(stack, "--image-path", str(big_gz), "--pvc-name", "bomb", "--pvc-size",
                          "2Mi")  # fmt: skip
    failed(result, "virtual size (over 2097152 bytes) is larger than --pvc-size 2Mi")


class Server:
    """A real HTTP server on loopback: files by name, and one that stalls halfway."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "stall.img":
            resp = web.StreamResponse(headers={"Content-Length": str(64 * MiB)})
            await resp.prepare(request)
            await resp.write(pattern(2 * MiB))
            self.stalled.set()
            await self.release.wait()
            return resp
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name])


@pytest.fixture
async def http() -> AsyncIterator[Server]:
    server = Server({})
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.base = f"http://{host}:{port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


async def test_url_import_has_the_same_checks_and_result(
    stack: Stack, tmp_path: Path, http: Server
) -> None:
    await stack.node("node-a")
    data = pattern(3 * MiB)
    http.files["disk.qcow2"] = make_qcow2(tmp_path, "disk.qcow2", data).read_bytes()
    http.files["disk.img.xz"] = lzma.compress(data)
    http.files["big.img"] = data
    for name, path in (("from-qcow2", "disk.qcow2"), ("from-xz", "disk.img.xz")):
        result = await upload(stack, "--url", f"{http.base}/{path}", "--pvc-name", name,
                              "--pvc-size", "4Mi")  # fmt: skip
        assert result.code == 0, result.err
        assert result.out == f"Uploading {path} completed successfully\n"
        assert disk(stack, name).read_bytes()[: len(data)] == data
        assert (await volume(stack, name)).source == f"{http.base}/{path}"
    failed(await upload(stack, "--url", f"{http.base}/nothing.img", "--pvc-name", "n404",
                        "--pvc-size", "4Mi"), "answered HTTP 404")  # fmt: skip
    failed(await upload(stack, "--url", f"{http.base}/big.img", "--pvc-name", "nbig",
                        "--pvc-size", "2Mi"), "is larger than --pvc-size 2Mi")  # fmt: skip
    ftp = await upload(stack, "--url", "ftp://example.org/a.img", "--pvc-name", "nftp",
                       "--pvc-size", "2Mi")  # fmt: skip
    failed(ftp, "url: 'ftp://example.org/a.img' is not an http(s)")
    for name in ("n404", "nbig", "nftp"):
        assert not (await volume(stack, name)).exists


def _interruptible() -> None:
    # A suite started in the background by a shell without job control inherits SIGINT ignored,
    # and Python keeps it so: the client must get Ctrl-C as a user's terminal would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def start_upload(st: Stack, url: str, name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, "image-upload", "--url", url, "--pvc-name", name, "--pvc-size", "128Mi",
        "--server", st.url, cwd=ROOT, env=cli_env(None), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_interruptible,
    )  # fmt: skip


async def test_an_interrupted_upload_leaves_a_failed_volume_and_no_disk(
    stack: Stack, http: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.upload

    await stack.node("node-a")
    # Ctrl-C: the client closes the session, the node fails the volume at once (the idle limit
    # stays long, so that only the client's word can end it). SIGKILL: nothing is said, the
    # node gives up after its idle limit (short here).
    for name, sig, idle_s, reason in (
        ("ctrl-c", signal.SIGINT, 30.0, "upload interrupted: interrupted by the client after 2Mi"),
        ("killed", signal.SIGKILL, 1.0, "upload interrupted: no data for 1s"),
    ):
        monkeypatch.setattr(workers.upload, "IDLE_S", idle_s)
        http.stalled.clear()
        proc = await start_upload(stack, f"{http.base}/stall.img", name)
        try:
            await asyncio.wait_for(http.stalled.wait(), 30)
            scratch = disk(stack, name).parent
            for _ in range(200):  # until the 2 MiB sent have reached the node
                parts = list(scratch.glob(".upload-*/data"))
                if parts and parts[0].stat().st_size == 2 * MiB:
                    break
                await asyncio.sleep(0.05)
            os.kill(proc.pid, sig)
            await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
        for _ in range(200):
            if (s := await volume(stack, name)).phase == FAILED:
                break
            await asyncio.sleep(0.05)
        assert s.phase == FAILED, s
        assert s.reason == reason
        assert not disk(stack, name).exists()
        assert not list(scratch.glob(".upload-*"))


async def test_an_upload_cut_by_the_node_worker_stopping_or_dying_is_failed(
    stack: Stack, http: Server
) -> None:
    from bus.client import send
    from events import commands as c

    await stack.node("node-a")
    # Made while node-a is Ready (a stopped node takes no new volume): filled below by an upload
    # that a worker died in the middle of.
    await send(stack.nc, c.CreateVolume(name="died", size="8Mi", source="upload", node="node-a"))
    # A graceful stop mid-upload: the session's task records why it ends.
    proc = await start_upload(stack, f"{http.base}/stall.img", "stopped")
    try:
        await asyncio.wait_for(http.stalled.wait(), 30)
        scratch = disk(stack, "stopped").parent
        for _ in range(200):
            if list(scratch.glob(".upload-*/data")):
                break
            await asyncio.sleep(0.05)
        await stack.stop_nodes()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 1
    assert b"upload failed: upload interrupted: the node worker stopped" in err
    s = await volume(stack, "stopped")
    assert (s.phase, s.reason) == (FAILED, "upload interrupted: the node worker stopped")
    assert not list(scratch.glob(".upload-*")) and not disk(stack, "stopped").exists()

    # A worker that died mid-upload left its scratch space: on restart it fails the volume.
    half = disk(stack, "died").parent / ".upload-0123abcd" / "data"
    half.parent.mkdir(parents=True)
    half.write_bytes(pattern(MiB))
    await stack.node("node-a")
    for _ in range(200):
        if (s := await volume(stack, "died")).phase == FAILED:
            break
        await asyncio.sleep(0.05)
    assert (s.phase, s.reason) == (FAILED, "upload interrupted: the node worker restarted")
    assert not half.parent.exists() and not disk(stack, "died").exists()


async def test_upload_sessions_refuse_what_they_cannot_take(stack: Stack) -> None:
    from bus.client import send
    from bus.tunnel import connect
    from events import commands as c
    from events.errors import BusUnavailable, VirtbusError

    await stack.node("node-a")
    await send(stack.nc, c.CreateVolume(name="up", size="8Mi", source="upload"))
    await send(stack.nc, c.CreateVolume(name="blank", size="8Mi", node="node-a"))
    for _ in range(200):
        if (await volume(stack, "blank")).phase == BOUND:
            break
        await asyncio.sleep(0.05)

    async def refused(name: str, *, kind: str = "upload", node: str = "node-a") -> str:
        with pytest.raises(VirtbusError) as err:
            await connect(stack.nc, node=node, kind=kind, namespace="default", name=name,
                          params={"bytes": 10}, wait_s=2)  # fmt: skip
        return err.value.message

    first, _ = await connect(stack.nc, node="node-a", kind="upload", namespace="default",
                             name="up", params={"bytes": 10})  # fmt: skip
    try:
        assert (
            await refused("up")
            == 'an upload into persistentvolumeclaims "up" is already in progress'
        )
    finally:
        await first.close("interrupted by the test")
    assert await refused("blank") == 'persistentvolumeclaims "blank" is Bound and takes no upload'
    assert await refused("ghost") == 'persistentvolumeclaims "ghost" not found'
    assert await refused("up", kind="teleport") == "unknown session 'teleport'"
    with pytest.raises(
        BusUnavailable,
        match=r"node node-z did not answer the upload session request \(is its worker",
    ):
        await connect(stack.nc, node="node-z", kind="upload", namespace="default", name="up",
                      wait_s=1)  # fmt: skip
    for _ in range(200):  # the interrupted first session failed the volume
        if (s := await volume(stack, "up")).phase == FAILED:
            break
        await asyncio.sleep(0.05)
    assert s.reason == "upload interrupted: interrupted by the test after 0"
