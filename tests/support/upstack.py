"""`virtbus up` as a user runs it: a child process, its `bus:` line, its children and its stderr."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from nats.aio.client import Client
from procs import children

from bus.connect import connect

CLI = [sys.executable, "-m", "virtbus"]


@contextlib.asynccontextmanager
async def virtbus_up(
    *args: str, cwd: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "up", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"bus: nats://127.0.0.1:"), line
        yield proc, line.decode().split()[1]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def as_admin(url: str, data_dir: Path) -> Client:
    """A connection to the secured stack `virtbus up --data-dir data_dir` runs, as its admin."""
    return await connect(url, creds=data_dir / "creds" / "admin.creds",
                         tls_ca=data_dir / "tls" / "ca.pem")  # fmt: skip


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


async def gone(pid: int, within: float = 10) -> bool:
    for _ in range(int(within / 0.05)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def named(exe: str, *, seeing: Path) -> set[int]:
    """PIDs whose executable is `exe` (zombies excluded) with a mount from under `seeing`."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rpartition(")")[2][1]
            if name != exe[:15] or state == "Z":
                continue
            with contextlib.suppress(OSError):
                if str(seeing) in Path(f"/proc/{entry}/mountinfo").read_text():
                    out.add(int(entry))
    return out


def worker_pid(up_pid: int, *others: int) -> int:
    """The node worker among `virtbus up`'s children (started as `python -m workers`), `others`
    (its other children) aside."""
    for pid in children(of=up_pid) - set(others):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"workers" in argv:
            return pid
    raise AssertionError("no node worker among the children")


async def next_line(stream: asyncio.StreamReader, prefix: bytes) -> bytes:
    """The next line of `stream` that starts with `prefix` (earlier lines are passed over)."""
    while line := await asyncio.wait_for(stream.readline(), 30):
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the stream ended before a line starting {prefix!r}")
