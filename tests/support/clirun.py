"""The `virtbus` CLI as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paths import ROOT

CLI = [sys.executable, "-m", "virtbus"]


WAIT_S = 60.0  # the most any one CLI call may take before the test gives up on it


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def ok(self) -> Result:
        assert self.code == 0, f"exit {self.code}; stderr:\n{self.err}\nstdout:\n{self.out}"
        return self

    def json(self) -> Any:
        return json.loads(self.ok().out)


def cli_env(url: str | None) -> dict[str, str]:
    """The environment of a CLI call: VIRTBUS_NATS_URL set to `url`, or unset when None."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTBUS_NATS_URL"}
    if url is not None:
        env["VIRTBUS_NATS_URL"] = url
    return env


async def virtbus(
    *args: str,
    env_url: str | None = None,
    stdin: str | None = None,
    wait_s: float = WAIT_S,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Result:
    """The CLI as a user runs it (from `cwd`); `env`, when given, is its whole environment."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=cwd, env=cli_env(env_url) if env is None else env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), wait_s
        )
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
