"""Guest data on real QEMU nodes: what the tiny guest writes to its persistent volume survives a
restart, a live migration (with an ssh session and a memory-dirtying loop running through it) and
a cold one, and is back to its old content after a snapshot restore; `virtbus scp` copies a file
in and out.

One guest walks through all of it, as KubeVirt's functional tests do with Cirros: the file is
written and read inside the guest, through `virtbus console` (a FAT filesystem on a volume of our
own: the guest's busybox has `mkdosfs` and its kernel `vfat`); the containerDisk is ephemeral.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest
from qemustack import QemuStack, qemu_stack
from registry import push_disk, registry_server
from test_guest_qemu import BOOT_S, VIRTBUS, Console, console, ssh_key, tiny

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref
from events.volumes import BOUND, VolumeState, apply_volume
from virtbus.guestdisk import IMAGE
from workers.volumes import claim_dir

pytestmark = pytest.mark.kvm

P, Q = "node-p", "node-q"
NODES = {P: 57, Q: 58}  # port ranges of their own, away from the other KVM test files
VM = "keeper"
# The 64Mi volume is the guest's virtio disk of 131072 sectors, whatever its letter.
DISK = "d=$(grep -l '^131072$' /sys/block/vd*/size); d=/dev/${d#/sys/block/}; d=${d%/size}"
MOUNT = f"{DISK}; mkdir -p /data; mount -t vfat -o iocharset=iso8859-1 $d /data"
MOUNTED = "grep -q ' /data ' /proc/mounts"
# Dirties guest memory all along (a tmpfs file rewritten in place, ~10 MB/s: well under the
# default migration bandwidth of 64 MiB/s) and says so every round.
DIRTY = (
    "i=0; while :; do dd if=/dev/zero of=/tmp/dirt bs=64k count=16 conv=notrunc 2>/dev/null;"
    " i=$((i+1)); echo round $i; usleep 100000; done"
)


async def shell(st: QemuStack, *lines: str, expect: bytes, vm: str = VM) -> None:
    """Run `lines` in a root shell on the console of `vm` (logging in if asked) until `expect`
    is seen. Retried: under load a byte of the serial console's output is now and then lost."""
    async with console(st, vm) as con:
        for _ in range(40):  # a prompt: the shell's, or the login's (then log in)
            con.seen = b""
            await con.type("\r")
            if await said(con, b"# ", within=3):
                break
            if b"login: " in con.seen:
                await con.type("root\r")
        for _ in range(4):
            con.seen = b""
            await con.type("; ".join(lines) + "\r")
            if await said(con, expect, within=20):
                return
        pytest.fail(f"no {expect!r} from {lines}: {con.seen[-800:]!r}")


async def said(con: Console, needle: bytes, *, within: float) -> bool:
    """Whether the console shows `needle` within `within` seconds (what precedes it is read)."""
    try:
        async with asyncio.timeout(within):
            while needle not in con.seen:
                chunk = await con.out.read(4096)
                if not chunk:
                    pytest.fail(f"console closed before {needle!r}: {con.seen[-800:]!r}")
                con.seen += chunk
    except TimeoutError:
        return False
    con.seen = con.seen.partition(needle)[2]
    return True


async def holds(st: QemuStack, content: str) -> None:
    """The guest's /data/f holds `content` (mounted first if this boot has not yet)."""
    # The quotes keep the echoed command line from matching.
    await shell(st, f"{MOUNTED} || {{ {MOUNT}; }}", "echo f''=$(cat /data/f)",
                expect=f"f={content}\r\n".encode())  # fmt: skip


async def write(st: QemuStack, content: str) -> None:
    await shell(st, f"echo {content} > /data/f", "sync", "echo wr''ote", expect=b"wrote\r\n")


async def started(st: QemuStack, *, on: str, after: int) -> None:
    """A new instance of the VM runs on `on` (its DomainStarted after event index `after`)."""
    await st.until_event(VM, m.DomainStarted, after=after, within=BOOT_S)
    s = await st.until(VM, "Running", within=BOOT_S)
    assert s.node == on


async def test_guest_data_survives_restart_migrations_and_a_snapshot_restore(
    kvm_host: None, guest_disk: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    base = tmp_path_factory.mktemp("gd")  # short: the node's unix socket path must fit 108 bytes
    key, public = await ssh_key(base)
    with registry_server(base / "registry") as reg:
        push_disk(reg.url, IMAGE, guest_disk)
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        async with qemu_stack(base, nodes=NODES, vm_network=True) as st:
            await send(st.nc, c.CreateVolume(name="gdata", size="64Mi", node=P))
            await volume_on(st, "gdata", node=P)
            keys = f"#cloud-config\nssh_authorized_keys:\n- {public}\n"
            await send(st.nc, tiny(VM, user_data=keys, claim="gdata"))
            await send(st.nc, c.StartVM(name=VM))
            await started(st, on=P, after=0)
            await shell(st, f"{MOUNTED} || {{ {DISK}; mkdosfs $d >/dev/null && {MOUNT}; }}",
                        "echo for''matted", expect=b"formatted\r\n")  # fmt: skip
            await write(st, "one")
            seen = len(await st.events(VM))
            await send(st.nc, c.SnapshotVM(name=VM, snapshot="first"))  # online: the guest runs
            await st.until_event(VM, m.SnapshotSucceeded, after=seen, within=60)
            await write(st, "two")

            # A restart: a new instance, a fresh containerDisk, the same volume.
            seen = len(await st.events(VM))
            await send(st.nc, c.RestartVM(name=VM))
            await started(st, on=P, after=seen)
            await holds(st, "two")
            # `virtbus scp` into the guest and back (OpenSSH's scp speaks SFTP to dropbear).
            (base / "sent").write_text("carried by scp\n")
            for src, dst in ((base / "sent", f"tiny@vm/{VM}:/tmp/sent"),
                             (f"tiny@vm/{VM}:/tmp/sent", base / "back")):  # fmt: skip
                scp = await asyncio.create_subprocess_exec(
                    str(VIRTBUS), "scp", str(src), str(dst), "-i", str(key), "--server", st.url,
                    "--known-hosts", str(base / "known_hosts"), "-t", "-oBatchMode=yes",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(scp.communicate(), 120)
                assert scp.returncode == 0, err
            assert (base / "back").read_text() == "carried by scp\n"

            # A live migration, an ssh session dirtying memory all through it.
            ssh = await asyncio.create_subprocess_exec(
                str(VIRTBUS), "ssh", f"tiny@vm/{VM}", "-i", str(key), "--server", st.url,
                "--known-hosts", str(base / "known_hosts"), "-c", DIRTY, "-t", "-oBatchMode=yes",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                out = Console(ssh)  # what the session prints, read as the console is
                await out.expect(b"round 5\n", within=BOOT_S)
                seen = len(await st.events(VM))
                await send(st.nc, c.MigrateVM(name=VM, target_node=Q))
                events = await st.until_event(VM, m.MigrationSucceeded, after=seen, within=BOOT_S)
                [done] = [e for e in events if isinstance(e, m.MigrationSucceeded)]
                assert (done.source, done.target, done.mode) == (P, Q, "live")
                # The session lives on: the loop's rounds go on, read past the migration.
                out.seen = b""
                rounds = (await out.expect(b"\n", within=60)).split()
                await out.expect(f"round {int(rounds[-1]) + 20}\n".encode(), within=60)
                assert ssh.returncode is None
            finally:
                if ssh.returncode is None:
                    ssh.kill()
                await ssh.communicate()
            await holds(st, "two")

            # A snapshot restore: back to what the volume held when the snapshot was taken.
            seen = len(await st.events(VM))
            await send(st.nc, c.StopVM(name=VM))
            await st.until(VM, "Stopped", within=120)
            await send(st.nc, c.RestoreVM(name=VM, snapshot="first", restore="back"))
            await st.until_event(VM, m.RestoreSucceeded, after=seen, within=60)
            seen = len(await st.events(VM))
            await send(st.nc, c.StartVM(name=VM))
            await started(st, on=P, after=seen)  # where the volume is (the live move left it)
            await holds(st, "one")

            # A cold migration: the stopped VM moves to Q, and its volume's data with it.
            await send(st.nc, c.StopVM(name=VM))
            await st.until(VM, "Stopped", within=120)
            seen = len(await st.events(VM))
            await send(st.nc, c.MigrateVM(name=VM, target_node=Q))
            await volume_on(st, "gdata", node=Q)
            await send(st.nc, c.StartVM(name=VM))
            await started(st, on=Q, after=seen)
            assert (claim_dir(st.node_dir(Q), "default", "gdata") / "disk.img").exists()
            await holds(st, "one")
            await send(st.nc, c.StopVM(name=VM))
            await st.until(VM, "Stopped", within=120)


async def volume_on(st: QemuStack, name: str, *, node: str, within: float = 120) -> None:
    """Until the volume `name` is Bound on `node` (made there, or moved there) and not moving."""
    ref = Ref("volume", "default", name)
    for _ in range(int(within * 10)):
        v = functools.reduce(apply_volume, [r.envelope for r in await st.store.read(ref)],
                             VolumeState())  # fmt: skip
        if (v.phase, v.node, v.moving_to) == (BOUND, node, ""):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"volume {name} not on {node} within {within}s")
