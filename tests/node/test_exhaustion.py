"""A node out of disk space, end to end on the libvirt test driver: an image upload, a snapshot,
a restore and a VM start (its containerDisk overlay, its cloud-init disk, its image pull) each hit
`No space left on device` part way through their writes.

The part of the node's data dir the operation writes to is a tiny tmpfs this test mounts, filled
by the operation itself with real (non-sparse) data. Each case checks that the failure is the
operation's failure event (VolumeFailed, SnapshotFailed, RestoreFailed, VMStartFailed) with the
kernel's words in its reason, that nothing half written is left (the filesystem's free space is
back to what it was, no file that looks whole), and that the node then still starts a VM to
Running. Needs root for `mount`; skipped, saying so, without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clirun import Result, virtbus
from driverstack import Stack, seed
from images import make_qcow2, pattern
from registry import available, push_disk, registry_server

from bus.client import send
from events import commands as c
from events import model as m
from events.envelope import Recorded
from events.names import Ref
from events.volumes import BOUND, FAILED, VolumeState, apply_volume

MiB = 1 << 20
ENOSPC = "No space left on device"
Mount = Callable[[Path, str], Path]


@pytest.fixture
def tmpfs() -> Iterator[Mount]:
    """Mounts tiny tmpfs filesystems; every one is unmounted at the end, whatever happened (a busy
    one lazily: detached at once, gone when its last user lets go)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs at {path}: {done.stderr.strip()}")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(path)], check=True)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def last_seq(st: Stack) -> int:
    info = await st.nc.jetstream().stream_info(st.store.stream)
    return int(info.state.last_seq)


async def next_event(st: Stack, ref: Ref, kind: type[m.Event], *, after: int) -> Recorded:
    """The first `kind` of `ref` recorded past stream sequence `after`, read off a live tail of
    the log as it is appended (no polling)."""
    async with asyncio.timeout(60):
        async with contextlib.aclosing(st.store.follow(from_seq=after + 1)) as tail:
            async for rec in tail:
                if rec.subject.startswith(f"{ref.prefix}.") and isinstance(rec.envelope.data, kind):
                    return rec
    raise AssertionError("the tail of the log ended")  # follow() never ends by itself


def manual(name: str) -> c.ApplyVM:
    """A seed VM under runStrategy Manual: a failed start is not retried by itself, so what it
    wrote is looked at with nothing writing again meanwhile."""
    return seed(name, runStrategy="Manual")


async def start_fails(st: Stack, name: str) -> m.Event:
    """Start the Manual VM `name`, expecting VMStartFailed; returns it once the orchestrator has
    concluded the failed instance (VMStopped: the VM may be started again)."""
    after = await last_seq(st)
    await send(st.nc, c.StartVM(name=name))
    failed = await next_event(st, Ref.vm(name), m.VMStartFailed, after=after)
    await next_event(st, Ref.vm(name), m.VMStopped, after=failed.seq)
    return failed.envelope.data


async def starts_running(st: Stack, name: str) -> None:
    """Another VM started on the node after the failure reaches Running."""
    after = await last_seq(st)
    await send(st.nc, seed(name))
    await send(st.nc, c.StartVM(name=name))
    await next_event(st, Ref.vm(name), m.DomainStarted, after=after)
    s = await st.state(name)
    assert (s.status, s.node) == ("Running", "node-a")


async def volume(st: Stack, name: str) -> VolumeState:
    s = VolumeState()
    for r in await st.store.read(Ref("volume", "default", name)):
        s = apply_volume(s, r.envelope)
    return s


async def upload(st: Stack, path: Path, name: str, size: str) -> Result:
    return await virtbus("image-upload", "--image-path", str(path), "--pvc-name", name,
                         "--pvc-size", size, "--server", st.url)  # fmt: skip


async def test_an_upload_onto_a_full_disk_fails_the_volume_and_leaves_nothing(
    tmpfs: Mount, stack: Stack, tmp_path: Path
) -> None:
    """Each stage that writes (receiving, unpacking, converting) runs out of room on a 4 MiB
    filesystem with a 16 MiB image: the volume ends Failed with ENOSPC's words, its scratch space
    is removed (the free space is back), no disk.img exists; a small upload and a VM then work."""
    volumes = tmpfs(stack.node_dir("node-a") / "volumes", "4m")
    await stack.node("node-a")
    data = pattern(16 * MiB)
    raw = tmp_path / "big.img"
    raw.write_bytes(data)
    gz = tmp_path / "big.img.gz"  # small on the wire, 16 MiB once unpacked
    gz.write_bytes(gzip.compress(data))
    qcow = make_qcow2(tmp_path, "big.qcow2", data)
    packed = tmp_path / "packed.qcow2"  # compressed clusters: 16 MiB once converted to raw
    await asyncio.to_thread(subprocess.run, ["qemu-img", "convert", "-q", "-c", "-f", "qcow2",
                            "-O", "qcow2", str(qcow), str(packed)], check=True)  # fmt: skip
    assert packed.stat().st_size < MiB and gz.stat().st_size < MiB
    empty = free(volumes)
    full = "the node cannot store the image: No space left on device"
    for name, path, sent in (
        ("received", raw, "The node ended the upload before all data was sent"),
        ("unpacked", gz, "Uploading data completed successfully"),
        ("converted", packed, "Uploading data completed successfully"),
    ):
        result = await upload(stack, path, name, "16Mi")
        s = await volume(stack, name)
        assert (result.code, s.phase) == (1, FAILED)
        if name == "converted":  # qemu-img's own words, with the offset it had reached
            assert s.reason.startswith("qemu-img convert failed: qemu-img: error while writing at "
                                       "byte "), s.reason  # fmt: skip
            assert s.reason.endswith(f": {ENOSPC}"), s.reason
        else:  # a write the node failed, not the image: not "the file is not valid gz data"
            assert s.reason == full
        *_, said, verdict = result.err.splitlines()
        assert said.startswith(sent), said
        assert verdict == f'error: persistentvolumeclaims "{name}" upload failed: {s.reason}'
        # Nothing of it is left: no disk.img, no scratch dir, every byte written is freed.
        assert list((volumes / "default" / name).iterdir()) == []
        assert free(volumes) == empty

    small = tmp_path / "small.img"
    small.write_bytes(pattern(MiB))
    (await upload(stack, small, "small", "2Mi")).ok()
    assert (await volume(stack, "small")).phase == BOUND
    assert (volumes / "default" / "small" / "disk.img").stat().st_size == 2 * MiB
    stack.provide_seed_volumes("node-a")
    await starts_running(stack, "other")


async def test_a_snapshot_onto_a_full_disk_fails_and_frees_what_it_copied(
    tmpfs: Mount, stack: Stack
) -> None:
    """The running VM's 16 MiB volume is copied into a 4 MiB snapshot store: `cp` runs out of room
    mid-copy, the snapshot is Failed with cp's ENOSPC words, its half copy is removed (a sweep
    need not come first: the free space is back at once), the VM paused for the copy runs on, a
    snapshot that fits then succeeds in the same store, and another VM starts."""
    snaps = tmpfs(stack.node_dir("node-a") / "snapshots", "4m")
    stack.provide_seed_volumes("node-a")
    pvc = stack.node_dir("node-a") / "volumes/default/iso-centos7/disk.img"
    pvc.write_bytes(pattern(16 * MiB))  # real data: a sparse copy would cost nothing
    await stack.node("node-a")
    await send(stack.nc, seed())
    after = await last_seq(stack)
    await send(stack.nc, c.StartVM(name="centos7"))
    await next_event(stack, Ref.vm("centos7"), m.DomainStarted, after=after)
    empty = free(snaps)

    after = await last_seq(stack)
    await send(stack.nc, c.SnapshotVM(name="centos7", snapshot="big"))
    rec = await next_event(stack, Ref.vm("centos7"), m.SnapshotFailed, after=after)
    s = await stack.state("centos7")
    version = s.snapshots["big"].requested
    partial = snaps / "default" / "centos7" / f"big-{version}.partial"
    assert rec.envelope.data == m.SnapshotFailed(
        snapshot="big",
        reason=f"copying {pvc}: cp: error writing '{partial}/cdromiso.img': {ENOSPC}",
    )
    assert (s.snapshots["big"].phase, s.status) == ("Failed", "Running")  # resumed after it
    assert list((snaps / "default" / "centos7").iterdir()) == []  # no half copy, no snapshot dir
    assert free(snaps) == empty

    with pvc.open("r+b") as f:
        f.truncate(MiB)  # now the copies fit (the 30Gi hostDisk is sparse)
    after = await last_seq(stack)
    await send(stack.nc, c.SnapshotVM(name="centos7", snapshot="small"))
    await next_event(stack, Ref.vm("centos7"), m.SnapshotSucceeded, after=after)
    version = (await stack.state("centos7")).snapshots["small"].requested
    copies = snaps / "default" / "centos7" / f"small-{version}"
    assert list((snaps / "default" / "centos7").iterdir()) == [copies]
    assert (copies / "cdromiso.img").read_bytes() == pattern(MiB)
    await starts_running(stack, "other")


async def test_a_restore_onto_a_full_disk_fails_and_leaves_the_volume_as_it_was(
    tmpfs: Mount, stack: Stack
) -> None:
    """The hostDisk lives on a 4 MiB filesystem holding 3 MiB of data: putting the snapshot's
    3 MiB copy beside it runs out of room mid-copy. The restore is Failed with cp's ENOSPC words,
    the staging file is removed, the volume keeps its data (never half the snapshot's), and the
    VM, no longer blocked by the restore, starts again."""
    stack.provide_seed_volumes("node-a")
    data = tmpfs(stack.node_dir("node-a") / "host/data", "4m")
    host = data / "disk.img"  # made sparse (30Gi, costing nothing) by the first start
    await stack.node("node-a")
    await send(stack.nc, seed())
    after = await last_seq(stack)
    await send(stack.nc, c.StartVM(name="centos7"))
    await next_event(stack, Ref.vm("centos7"), m.DomainStarted, after=after)
    with host.open("r+b") as f:
        f.write(pattern(3 * MiB))
    after = await last_seq(stack)
    await send(stack.nc, c.SnapshotVM(name="centos7", snapshot="snap"))
    await next_event(stack, Ref.vm("centos7"), m.SnapshotSucceeded, after=after)
    now = bytes(reversed(pattern(3 * MiB)))
    with host.open("r+b") as f:
        f.write(now)
    after = await last_seq(stack)
    await send(stack.nc, c.StopVM(name="centos7"))
    await next_event(stack, Ref.vm("centos7"), m.VMStopped, after=after)
    room = free(data)

    after = await last_seq(stack)
    await send(stack.nc, c.RestoreVM(name="centos7", snapshot="snap", restore="r1"))
    rec = await next_event(stack, Ref.vm("centos7"), m.RestoreFailed, after=after)
    version = (await stack.state("centos7")).snapshots["snap"].requested
    copy = stack.node_dir("node-a") / f"snapshots/default/centos7/snap-{version}/harddrive.img"
    assert rec.envelope.data == m.RestoreFailed(
        snapshot="snap",
        restore="r1",
        reason=f"copying {copy}: cp: error writing '{data}/.disk.img.restoring': {ENOSPC}",
    )
    assert [p.name for p in data.iterdir()] == ["disk.img"]  # no staging file left
    assert free(data) == room
    with host.open("rb") as f:
        assert f.read(3 * MiB) == now  # the volume as it was, not part restored
    after = await last_seq(stack)
    await send(stack.nc, c.StartVM(name="centos7"))
    await next_event(stack, Ref.vm("centos7"), m.DomainStarted, after=after)
    assert (await stack.state("centos7")).status == "Running"


async def test_an_overlay_onto_a_full_disk_fails_the_start_and_the_node_serves_on(
    tmpfs: Mount, stack: Stack
) -> None:
    """The VM's instance dir is a 128 KiB filesystem and its containerDisk overlay (qcow2 header,
    refcount and L1 tables: ~196 KiB) does not fit: `qemu-img create` fails part way, the start
    fails with its ENOSPC words, no overlay is left to look whole; another VM on the node runs,
    and so does this one once its filesystem has room."""
    stack.provide_seed_volumes("node-a")
    instance = tmpfs(stack.node_dir("node-a") / "vms/default/centos7", "128k")
    empty = free(instance)
    await stack.node("node-a")
    await send(stack.nc, manual("centos7"))
    image = stack.node_dir("node-a") / "images/kubevirt_virtio-container-disk/disk.qcow2"
    assert await start_fails(stack, "centos7") == m.VMStartFailed(
        reason=f"spec.template.spec.volumes[2]: cannot make an overlay of {image}: qemu-img: "
        f"{instance}/virtiocontainerdisk.qcow2: Could not write refcount table: {ENOSPC}",
        status="Failed",
        node="node-a",
    )
    assert list(instance.iterdir()) == []  # qemu-img's half file is gone
    assert free(instance) == empty
    await starts_running(stack, "other")

    # Room made: the same filesystem grown to 4 MiB (what freeing space on a node amounts to).
    await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,size=4m", str(instance)],
                            check=True)  # fmt: skip
    after = await last_seq(stack)
    await send(stack.nc, c.StartVM(name="centos7"))
    await next_event(stack, Ref.vm("centos7"), m.DomainStarted, after=after)
    assert (await stack.state("centos7")).status == "Running"


async def test_a_cloud_init_disk_onto_a_full_disk_fails_the_start(
    tmpfs: Mount, stack: Stack
) -> None:
    """A 512 KiB user-data ISO written into a 128 KiB instance dir: the write's OSError (which
    escaped the start before) fails the start with ENOSPC's words, the half ISO is removed, and
    another VM on the node runs."""
    stack.provide_seed_volumes("node-a")
    instance = tmpfs(stack.node_dir("node-a") / "vms/default/cloud", "128k")
    empty = free(instance)
    await stack.node("node-a")
    vm = manual("cloud")
    user_data = "#cloud-config\n" + "".join(f"# line {i:08d}\n" for i in range(512 * 1024 // 16))
    vm.spec["template"]["spec"]["volumes"].insert(
        0, {"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}}
    )
    await send(stack.nc, vm)
    assert await start_fails(stack, "cloud") == m.VMStartFailed(
        reason="spec.template.spec.volumes[0]: cannot make the cloud-init disk: "
        f"[Errno 28] {ENOSPC}",
        status="Failed",
        node="node-a",
    )
    assert list(instance.iterdir()) == []
    assert free(instance) == empty
    await starts_running(stack, "other")


async def test_a_container_disk_pulled_onto_a_full_disk_fails_the_start(
    tmpfs: Mount, stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's image cache is a 4 MiB filesystem and the image's disk 16 MiB of data (a small
    gzip layer on the wire): unpacking it runs out of room. The start fails ErrImagePull with
    ENOSPC's words, naming the node's disk rather than the registry; the pull's temp dir is
    removed and nothing is cached. Once the filesystem has room the same start pulls and runs,
    and another VM runs from the cached image."""
    assert available(), "docker-registry is missing: run `make setup`"
    images = tmpfs(stack.node_dir("node-a") / "images", "4m")
    raw = tmp_path / "disk.img"
    raw.write_bytes(pattern(16 * MiB))
    claim = stack.node_dir("node-a") / "volumes/default/iso-centos7"
    claim.mkdir(parents=True)
    (claim / "disk.img").write_bytes(bytes(4096))
    image = "kubevirt/virtio-container-disk:latest"
    with registry_server(tmp_path / "registry") as reg:
        push_disk(reg.url, "kubevirt/virtio-container-disk", raw)
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        await stack.node("node-a")
        empty = free(images)
        await send(stack.nc, manual("centos7"))
        assert await start_fails(stack, "centos7") == m.VMStartFailed(
            reason=f"spec.template.spec.volumes[2].containerDisk.image: cannot pull {image}: "
            f"{reg.url}: cannot store {image} in {images}: [Errno 28] {ENOSPC}",
            status="ErrImagePull",
            node="node-a",
        )
        assert [p for p in images.rglob("*") if not p.is_dir()] == []  # nothing half cached
        assert free(images) == empty

        # Room made: the same filesystem grown to 64 MiB (what freeing space amounts to).
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,size=64m", str(images)],
                                check=True)  # fmt: skip
        after = await last_seq(stack)
        await send(stack.nc, c.StartVM(name="centos7"))
        await next_event(stack, Ref.vm("centos7"), m.DomainStarted, after=after)
        assert (await stack.state("centos7")).status == "Running"
    await starts_running(stack, "other")  # from the cache: the registry is gone


async def test_a_volume_moved_onto_a_full_node_stays_where_it_was(
    tmpfs: Mount, stack: Stack, tmp_path: Path
) -> None:
    """node-b's volumes live on a 4 MiB filesystem; a volume holding 16 MiB of data is moved
    there. The copy runs out of room part way: the move fails with ENOSPC's words (not an
    OSError's repr), node-b keeps nothing of it, the volume stays Bound on node-a with its data,
    and node-b still starts a VM."""
    incoming = tmpfs(stack.node_dir("node-b") / "volumes", "4m")
    await stack.node("node-a")
    await stack.node("node-b")
    image = tmp_path / "data.img"
    image.write_bytes(pattern(16 * MiB))
    (await upload(stack, image, "root", "16Mi")).ok()
    assert (await volume(stack, "root")).node == "node-a"
    empty = free(incoming)
    moved = await virtbus("volume", "move", "root", "--to", "node-b", "--server", stack.url)
    reason = f"node node-b cannot store the volume: {ENOSPC}"
    assert (moved.code, moved.err.splitlines()[-1]) == (
        1, f'error: persistentvolumeclaims "root" stays on node-a: move failed: {reason}'
    )  # fmt: skip
    s = await volume(stack, "root")
    assert (s.phase, s.node) == (BOUND, "node-a")
    assert list((incoming / "default").iterdir()) == []  # no half copy, no directory
    assert free(incoming) == empty
    assert disk_of(stack, "node-a", "root").read_bytes() == pattern(16 * MiB)
    stack.provide_seed_volumes("node-b")
    await send(stack.nc, c.DrainNode(name="node-a"))  # cordoned: the next VM goes to node-b
    after = await last_seq(stack)
    await send(stack.nc, seed("other"))
    await send(stack.nc, c.StartVM(name="other"))
    await next_event(stack, Ref.vm("other"), m.DomainStarted, after=after)
    vm = await stack.state("other")
    assert (vm.status, vm.node) == ("Running", "node-b")


def disk_of(st: Stack, node: str, name: str) -> Path:
    return st.node_dir(node) / "volumes" / "default" / name / "disk.img"
