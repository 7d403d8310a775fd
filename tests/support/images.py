"""Disk images whose content a test can recognise: made with qemu-img, read back by their head."""

from __future__ import annotations

import subprocess
from pathlib import Path


def pattern(size: int) -> bytes:
    """Data a disk image of zeros cannot pass for."""
    return (b"virtbus!" * (size // 8 + 1))[:size]


def make_qcow2(tmp: Path, name: str, data: bytes) -> Path:
    raw = tmp / f"{name}.raw"
    raw.write_bytes(data)
    out = tmp / name
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
                   check=True)  # fmt: skip
    return out


def write(path: Path, data: bytes) -> None:
    with path.open("r+b") as f:
        f.write(data)


def head(path: Path, n: int = 6) -> bytes:
    with path.open("rb") as f:
        return f.read(n)
