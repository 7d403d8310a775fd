"""The byte formats the guest builder writes itself: an initramfs (cpio "newc"), an MBR with one
bootable partition, and the kernel modules' dependency order read from their `.modinfo`.

Written here rather than with cpio, sfdisk and depmod so the build needs no host tools beyond
dpkg-deb, apt-get and qemu-img (the FAT filesystem and its boot loader come from the downloaded
mtools and syslinux packages).
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

SECTOR = 512
ALIGN = 1 << 20  # the partition starts at 1 MiB, as every partitioning tool puts it
_NEWC = "070701"


def _newc_header(name: bytes, *, ino: int, mode: int, size: int, nlink: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    head = _NEWC + "".join(f"{v:08x}" for v in fields)
    data = head.encode() + name + b"\0"
    return data + b"\0" * (-len(data) % 4)


def cpio(root: Path) -> bytes:
    """A newc archive of the tree under `root` (owner root, no timestamps: reproducible)."""
    out = bytearray()
    entries = sorted(p for p in root.rglob("*"))
    for ino, path in enumerate(entries, start=1):
        name = str(path.relative_to(root)).encode()
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if path.is_symlink():
            body = os.readlink(path).encode()
            mode |= stat.S_IFLNK
        elif path.is_dir():
            body, mode = b"", mode | stat.S_IFDIR
        else:
            body, mode = path.read_bytes(), mode | stat.S_IFREG
        nlink = 2 if path.is_dir() and not path.is_symlink() else 1
        out += _newc_header(name, ino=ino, mode=mode, size=len(body), nlink=nlink)
        out += body + b"\0" * (-len(body) % 4)
    out += _newc_header(b"TRAILER!!!", ino=0, mode=0, size=0, nlink=1)
    return bytes(out)


def fat_type(partition: Path) -> int:
    """The MBR partition type of a FAT filesystem image: 0x0c (FAT32, LBA) or 0x0e (FAT16, LBA)."""
    with partition.open("rb") as f:
        boot = f.read(SECTOR)
    return 0x0C if boot[82:87] == b"FAT32" else 0x0E


def disk_with_partition(disk: Path, *, mbr_code: bytes, partition: Path) -> None:
    """A disk image at `disk`: boot code and a table whose one active partition is `partition`
    (copied in at 1 MiB)."""
    size = partition.stat().st_size
    if size % SECTOR:
        raise ValueError(f"{partition} is not a whole number of sectors")
    start, count = ALIGN // SECTOR, size // SECTOR
    # Active, CHS fields saturated (LBA only), type, first sector, sector count.
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", fat_type(partition), b"\xfe\xff\xff",
                        start, count)  # fmt: skip
    head = mbr_code[:440].ljust(440, b"\0") + b"\0" * 6 + entry + b"\0" * 48 + b"\x55\xaa"
    with disk.open("wb") as out, partition.open("rb") as part:
        out.write(head.ljust(ALIGN, b"\0"))
        while chunk := part.read(ALIGN):
            out.write(chunk)


def modinfo_depends(ko: Path) -> list[str]:
    """The modules `ko` needs loaded first (the `depends=` of its .modinfo section)."""
    data = ko.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + 9 : data.index(b"\0", at + 9)].decode()
    return [d for d in value.split(",") if d]


def module_order(wanted: list[str], *, index: dict[str, Path], builtin: set[str]) -> list[str]:
    """`wanted` and what they depend on, each after its dependencies; built-in ones left out.
    `index` maps a module name (with `_`) to its file."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise LookupError(f"kernel module {name} is neither a module nor built in")
        for dep in modinfo_depends(index[name]):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order
