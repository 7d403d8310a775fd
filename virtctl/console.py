"""`virtbus vnc` and `virtbus console`: a running VM's display and serial console, over the bus.

The client never reaches a node directly: `vnc` listens on a local TCP port (printing `{"port":N}`
like `virtctl vnc --proxy-only`) and relays each connection through an `bus.tunnel` session to
the node worker, which holds the domain's VNC socket; `console` relays the terminal the same way
to the domain's serial pty. Ctrl-] ends a console session, as in virtctl and virsh. `vnc
screenshot` asks the node for a PNG of the screen (workers/screens.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

from nats.aio.client import Client

from bus.client import query, session
from bus.tunnel import FRAME, connect, relay, relay_socket
from events.errors import VirtbusError
from events.protocol import Query
from events.state import PENDING, RUNNING, SCHEDULED, SCHEDULING, VMState

STARTING_PHASES = (PENDING, SCHEDULING, SCHEDULED)

ESCAPE = b"\x1d"  # Ctrl-]
VIEWERS = ("remote-viewer", "vncviewer")


async def running_vmi(nc: Client, *, name: str, namespace: str) -> VMState:
    found = [s for s in (await query(nc, Query(namespace=namespace, name=name))).vms if s.exists]
    if not found:
        raise VirtbusError(f'virtualmachineinstance.kubevirt.io "{name}" not found')
    if found[0].phase != RUNNING or not found[0].node:
        raise VirtbusError(f'VirtualMachineInstance "{name}" is not running')
    return found[0]


async def vnc(
    url: str, *, name: str, namespace: str, address: str, port: int, proxy_only: bool
) -> int:
    async with session(url) as nc:
        s = await running_vmi(nc, name=name, namespace=namespace)
        done = asyncio.Event()
        failures: list[str] = []

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                pipe, _ = await connect(nc, node=s.node, kind="vnc", namespace=namespace,
                                        name=name)  # fmt: skip
            except VirtbusError as err:
                failures.append(err.message)
                writer.close()
                done.set()
                return

            try:
                await relay_socket(pipe, reader, writer)
            finally:
                await pipe.close("the VNC client left")
                done.set()  # one viewer session, like virtctl

        server = await asyncio.start_server(on_client, address, port)
        async with server:
            bound = server.sockets[0].getsockname()[1]
            sys.stdout.write(json.dumps({"port": bound}, separators=(",", ":")) + "\n")  # virtctl's
            sys.stdout.flush()
            viewer = None if proxy_only else _viewer(address, bound)
            try:
                await done.wait()
            finally:
                if viewer is not None and viewer.poll() is None:
                    viewer.terminate()
    if failures:
        raise VirtbusError(failures[0])
    return 0


def _viewer(address: str, port: int) -> subprocess.Popen[bytes] | None:
    for name in VIEWERS:
        if path := shutil.which(name):
            target = f"vnc://{address}:{port}" if name == "remote-viewer" else f"{address}::{port}"
            return subprocess.Popen([path, target])
    print(f"no VNC viewer ({' or '.join(VIEWERS)}) found; connect one to {address}:{port}",
          file=sys.stderr)  # fmt: skip
    return None


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def until_running(url: str, *, name: str, namespace: str, timeout_s: float) -> None:
    """virtctl console's `--timeout`: a VMI still starting is waited for, up to `timeout_s`."""
    from virtctl.kinds import VMI
    from virtctl.waiting import wait

    async with session(url) as nc:
        found = [s for s in (await query(nc, Query(namespace=namespace, name=name))).vms
                 if s.exists]  # fmt: skip
    if not found or found[0].phase not in STARTING_PHASES:
        return  # not there, running or over: `running_vmi` says which
    met = await wait(url, kind=VMI, name=name, namespace=namespace, condition="phase=Running",
                     timeout_s=timeout_s)  # fmt: skip
    if not met:
        raise VirtbusError(f'Timeout trying to connect to the virtual machine instance "{name}"')


async def console(url: str, *, name: str, namespace: str, timeout_s: float = 300) -> int:
    await until_running(url, name=name, namespace=namespace, timeout_s=timeout_s)
    async with session(url) as nc:
        s = await running_vmi(nc, name=name, namespace=namespace)
        pipe, _ = await connect(nc, node=s.node, kind="console", namespace=namespace, name=name)
        print(f"Successfully connected to {name} console. The escape sequence is ^]",
              file=sys.stderr)  # fmt: skip
        loop = asyncio.get_running_loop()
        keys: asyncio.Queue[bytes] = asyncio.Queue()
        stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

        def readable() -> None:
            data = os.read(stdin, FRAME)
            if not data or ESCAPE in data:  # end of input, or Ctrl-]: the session ends
                loop.remove_reader(stdin)
                if data := data.split(ESCAPE)[0]:
                    keys.put_nowait(data)
                keys.put_nowait(b"")
                return
            keys.put_nowait(data)

        async def write(data: bytes) -> None:
            await asyncio.to_thread(os.write, stdout, data)

        with _raw_terminal(stdin):
            loop.add_reader(stdin, readable)
            try:
                await relay(pipe, read=keys.get, write=write)
            finally:
                loop.remove_reader(stdin)
                await pipe.close("the console client left")
    print(f"\nconsole of {name} closed ({pipe.reason})", file=sys.stderr)
    return 0


async def screenshot(url: str, *, name: str, namespace: str, file: str) -> int:
    """`vnc screenshot NAME --file F`: the node's PNG of the screen, into F (`-`: stdout)."""
    async with session(url) as nc:
        s = await running_vmi(nc, name=name, namespace=namespace)
        pipe, info = await connect(nc, node=s.node, kind="screenshot", namespace=namespace,
                                   name=name)  # fmt: skip
        data = bytearray()
        try:
            async for frame in pipe.frames(idle_s=30, idle=lambda: VirtbusError(
                    f"the screenshot of {name} stopped coming")):  # fmt: skip
                data += frame
        finally:
            await pipe.close("received")
    if len(data) != int(info.get("size", -1)):
        raise VirtbusError(f"the screenshot of {name} came short: {len(data)} of {info.get('size')}"
                           f" bytes ({pipe.reason})")  # fmt: skip
    if file == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        await asyncio.to_thread(Path(file).write_bytes, bytes(data))
    except OSError as err:
        raise VirtbusError(f"Can't write image to a file: {err.strerror or err}") from err
    return 0
