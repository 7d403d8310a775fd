"""What a user sees with `ps`: a process's children, a domain's QEMU processes."""

from __future__ import annotations

import os
from pathlib import Path


def children(of: int | None = None) -> set[int]:
    """Live (not zombie) PIDs whose parent is `of`, by default this process."""
    me, out = os.getpid() if of is None else of, set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if fields and fields[0] != "Z" and int(fields[1]) == me:
                out.add(int(entry))
    return out


def qemu_pids(domain: str) -> list[int]:
    """Live QEMU processes running `domain`, found by its `-name guest=<domain>,...` argument."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile; a zombie has an empty cmdline and never matches
        if (
            argv
            and b"qemu-system" in argv[0]
            and any(a.split(b",")[0] == f"guest={domain}".encode() for a in argv)
        ):
            found.append(int(entry))
    return sorted(found)
