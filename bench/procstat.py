"""What a benchmark's processes cost, read from /proc: one place for the CPU and memory figures
`bench control`, `bench scale` and `bench webhooks` report."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            kids[int(stat.rpartition(")")[2].split()[1])].append(int(entry.name))
    return kids


def _part(pid: int) -> str:
    """`nats-server`, or the module a Python part runs as (`python -m orchestrator`)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"-m" in argv[:-1]:
        return argv[argv.index(b"-m") + 1].decode()
    return Path(argv[0].decode()).name


def cpu_by_part() -> dict[str, float]:
    """CPU seconds so far of this process ("client") and of each part it started, its
    descendants summed by `_part` (three nats-servers are one "nats-server")."""
    out: dict[str, float] = defaultdict(float)
    out["client"] = cpu_s(os.getpid())
    kids = _children()
    todo = list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            out[_part(pid)] += cpu_s(pid)
        except (OSError, IndexError):  # ended meanwhile
            continue
    return dict(out)
