"""Upload -> boot, VNC and serial console over the bus, on real QEMU/KVM.

The stack of test_hotplug_qemu.py (a fresh nats-server, an in-process orchestrator, a `QemuNode`
and an in-process `Worker`); every verb runs as the CLI a user types, in a subprocess. An ISO made
here is uploaded into a volume and the VM boots from it as a cdrom, its BIOS talking on the serial
console (`firmware.bootloader.bios.useSerial`); the test then does a real RFB handshake and a
framebuffer update through `virtbus vnc`, and reads the BIOS's words through `virtbus console`.
Skipped only where root, /dev/kvm or QEMU/libvirt are missing.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pycdlib
import pytest
from qemustack import QemuStack, qemu_stack
from test_worker_qemu import NODE

from bus.client import send
from events import commands as c
from workers.volumes import claim_dir

pytestmark = pytest.mark.kvm

NODE_INDEX = 20  # its own VNC/migration port range, away from the other QEMU tests' nodes
VIRTBUS = Path(sys.executable).parent / "virtbus"
ESCAPE = b"\x1d"


@pytest.fixture
async def cstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QemuStack]:
    # A short base: the node's unix socket path must fit 108 bytes.
    async with qemu_stack(tmp_path_factory.mktemp("cq"), nodes={NODE: NODE_INDEX}) as st:
        yield st


def make_iso(path: Path) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="VIRTBUS")
    text = b"not bootable\n"
    iso.add_fp(io.BytesIO(text), len(text), "/README.TXT;1")
    iso.write(str(path))
    iso.close()


def cdrom_vm(name: str, claim: str) -> c.ApplyVM:
    template = {"spec": {
        "terminationGracePeriodSeconds": 2,
        "domain": {
            "devices": {"disks": [{"name": "iso", "cdrom": {"bus": "sata"}, "bootOrder": 1}]},
            "firmware": {"bootloader": {"bios": {"useSerial": True}}},
            "resources": {"requests": {"memory": "64Mi"}},
        },
        "volumes": [{"name": "iso", "persistentVolumeClaim": {"claimName": claim}}],
    }}  # fmt: skip
    return c.ApplyVM(name=name, spec={"runStrategy": "Halted", "template": template})


async def cli(*args: str, url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(VIRTBUS), *args, "--server", url, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def read_until(stream: asyncio.StreamReader, needle: bytes, *, within: float) -> bytes:
    seen = b""
    async with asyncio.timeout(within):
        while needle not in seen:
            chunk = await stream.read(4096)
            if not chunk:
                break
            seen += chunk
    return seen


async def vnc_frame(vm: str, *args: str, url: str) -> None:
    """`virtbus vnc VM --proxy-only [ARGS]`, then a real RFB handshake and one framebuffer update
    through its port on 127.0.0.1; the proxy exits 0 once the client leaves."""
    proxy = await cli("vnc", vm, "--proxy-only", *args, url=url)
    try:
        assert proxy.stdout is not None
        line = await asyncio.wait_for(proxy.stdout.readline(), 30)
        port = json.loads(line)["port"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        banner = await asyncio.wait_for(reader.readexactly(12), 30)
        assert banner.startswith(b"RFB 003.00"), banner
        writer.write(b"RFB 003.008\n")
        count = (await reader.readexactly(1))[0]
        types = await reader.readexactly(count)
        assert 1 in types  # "None": the display is loopback-only, reached through the tunnel
        writer.write(b"\x01")
        assert await reader.readexactly(4) == b"\0\0\0\0"  # SecurityResult OK
        writer.write(b"\x01")  # ClientInit, shared
        width, height = struct.unpack(">HH", await reader.readexactly(4))
        await reader.readexactly(16)  # pixel format
        (name_len,) = struct.unpack(">I", await reader.readexactly(4))
        name = await reader.readexactly(name_len)
        assert width > 0 and height > 0 and vm.encode() in name
        writer.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        kind, _, rects = struct.unpack(">BBH", await asyncio.wait_for(reader.readexactly(4), 30))
        assert (kind, rects > 0) == (0, True)  # FramebufferUpdate with at least one rectangle
        writer.close()
        await writer.wait_closed()
    finally:
        code, err = await finish(proxy)
    assert code == 0, err


def reset(uri: str, domain: str) -> None:
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(domain).reset(0)
    finally:
        conn.close()


async def test_upload_boot_vnc_and_console_over_the_bus(cstack: QemuStack, tmp_path: Path) -> None:
    iso = tmp_path / "boot.iso"
    make_iso(iso)
    code, out, err = await cstack.virtbus("image-upload", "--image-path", str(iso), "--pvc-name",
                                          "iso", "--pvc-size", "1Mi")  # fmt: skip
    assert code == 0, err
    assert out == "Uploading boot.iso completed successfully\n"
    assert (
        claim_dir(cstack.data_dir, "default", "iso") / "disk.img"
    ).read_bytes() == iso.read_bytes()

    await send(cstack.nc, cdrom_vm("viewer", "iso"))
    await send(cstack.nc, c.StartVM(name="viewer"))
    await cstack.until("viewer", "Running")
    xml = await cstack.domain_xml("default_viewer")
    assert "useserial='yes'" in xml or 'useserial="yes"' in xml

    # VNC: the server's banner, the handshake, and one framebuffer update, through the bus.
    await vnc_frame("viewer", url=cstack.url)

    # Console: attach, reset the guest, read what its BIOS writes on the serial line.
    con = await cli("console", "viewer", url=cstack.url)
    try:
        assert con.stderr is not None and con.stdout is not None and con.stdin is not None
        hello = await read_until(con.stderr, b"escape sequence is ^]", within=30)
        assert b"Successfully connected to viewer console" in hello
        await asyncio.to_thread(reset, cstack.node.uri, "default_viewer")
        text = await read_until(con.stdout, b"Booting from DVD/CD", within=30)
        assert b"SeaBIOS" in text and b"Booting from DVD/CD" in text, text
        con.stdin.write(ESCAPE)
        await con.stdin.drain()
    finally:
        code, err = await finish(con)
    assert code == 0, err
    assert "console of viewer closed" in err

    # The node's end closes too: stopping the VM ends an attached console session cleanly.
    con = await cli("console", "viewer", url=cstack.url)
    try:
        assert con.stderr is not None
        await read_until(con.stderr, b"escape sequence is ^]", within=30)
        await send(cstack.nc, c.StopVM(name="viewer"))
        await cstack.until("viewer", "Stopped")
    finally:
        code, err = await finish(con)
    assert code == 0, err
    assert "console of viewer closed (closed by the node)" in err

    # Refused with the reason, and no session left behind.
    late = await cli("vnc", "viewer", "--proxy-only", url=cstack.url)
    code, err = await finish(late)
    assert (code, err) == (1, 'error: VirtualMachineInstance "viewer" is not running\n')
