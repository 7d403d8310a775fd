"""The tiny guest's builder: its own byte formats (cpio, MBR, module order) and the built image.

The image test builds (or finds cached) the real thing from the Debian mirror, as `virtbus up
--hypervisor qemu` and the KVM tests do; booting it is theirs (tests/qemu/test_guest_qemu.py).
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from virtbus.guest import parts
from virtbus.guest.build import IMAGE_NAME, content_key, guest_image, pinned_packages


def test_cpio_newc_holds_files_dirs_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("tiny\n")
    (root / "init").symlink_to("bin/busybox")
    data = parts.cpio(root)
    assert data.startswith(b"070701")
    # Each entry: a 110-byte header, its name, its body; names in sorted order, then the trailer.
    names, at = [], 0
    while True:
        head = data[at : at + 110]
        size, namesize = int(head[54:62], 16), int(head[94:102], 16)
        name = data[at + 110 : at + 110 + namesize - 1].decode()
        body_at = at + 110 + namesize + (-(110 + namesize) % 4)
        body = data[body_at : body_at + size]
        names.append((name, body))
        at = body_at + size + (-size % 4)
        if name == "TRAILER!!!":
            break
    assert names == [("etc", b""), ("etc/hostname", b"tiny\n"), ("init", b"bin/busybox"),
                     ("TRAILER!!!", b"")]  # fmt: skip
    assert at == len(data)


def test_disk_has_one_active_partition_at_one_mib(tmp_path: Path) -> None:
    part = tmp_path / "part.img"
    part.write_bytes(b"\xeb" + b"\0" * 81 + b"FAT32" + b"\0" * (4096 - 87))
    disk = tmp_path / "disk.raw"
    parts.disk_with_partition(disk, mbr_code=b"\xfa" * 440, partition=part)
    raw = disk.read_bytes()
    assert raw[:440] == b"\xfa" * 440 and raw[510:512] == b"\x55\xaa"
    active, ptype, start, count = struct.unpack("<B3xB3xII", raw[446:462])
    assert (active, ptype, start, count) == (0x80, 0x0C, 2048, 8)
    assert raw[1 << 20 :] == part.read_bytes()


def test_modules_load_after_what_they_depend_on(tmp_path: Path) -> None:
    def ko(name: str, depends: str) -> Path:
        path = tmp_path / f"{name}.ko"
        path.write_bytes(b"\x7fELF\0license=GPL\0depends=" + depends.encode() + b"\0name=x\0")
        return path

    index = {"virtio_net": ko("virtio_net", "net_failover,virtio"),
             "net_failover": ko("net_failover", "failover"), "failover": ko("failover", ""),
             "virtio": ko("virtio", "")}  # fmt: skip
    order = parts.module_order(["virtio_net"], index=index, builtin={"virtio"})
    assert order == ["failover", "net_failover", "virtio_net"]
    with pytest.raises(LookupError, match="nosuch"):
        parts.module_order(["nosuch"], index=index, builtin=set())


def test_the_image_is_built_once_per_content(tmp_path: Path) -> None:
    image = guest_image()  # the shared cache: built by whichever test or `virtbus up` came first
    packages = pinned_packages()
    assert image.name == IMAGE_NAME and image.parent.name == content_key(packages)
    assert json.loads((image.parent / "packages.json").read_text()) == packages
    shown = subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                           check=True, capture_output=True, text=True)  # fmt: skip
    info = json.loads(shown.stdout)
    assert info["format"] == "qcow2"
    assert image.stat().st_size < 64 << 20  # tens of MB, not hundreds
    assert guest_image() == image  # found, not built again
