"""VNC and serial console sessions, the node's end: a running domain's display and console, local.

The domain's VNC server listens on 127.0.0.1 only (its port is in the live domain XML) and its
serial console is a pty (`<serial type='pty'>`, path in the live XML). The node worker is the one
process that reaches both, so a client's session (`virtbus vnc`, `virtbus console`) is relayed
here between an `bus.tunnel` pipe and the local socket or pty, both ways, until either end
closes.
"""

from __future__ import annotations

import asyncio
import os
import termios
import tty
import xml.etree.ElementTree as ET
from typing import Any

from bus.store import EventStore
from bus.tunnel import FRAME, Pipe, SessionOpen, relay, relay_socket
from events.errors import ValidationError
from workers.hypervisor import Hypervisor
from workers.sessions import Body, running_here


def vnc_port(xml: str) -> int | None:
    g = ET.fromstring(xml).find("./devices/graphics[@type='vnc']")
    port = int(g.get("port", "-1")) if g is not None else -1
    return port if port > 0 else None


def console_pty(xml: str) -> str | None:
    root = ET.fromstring(xml)
    for el in (*root.findall("./devices/console[@type='pty']"),
               *root.findall("./devices/serial[@type='pty']")):  # fmt: skip
        source = el.find("source")
        path = el.get("tty") or (source.get("path") if source is not None else None)
        if path:
            return path
    return None


class Pty:
    """A domain's console pty, raw and non-blocking, read through the event loop."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)  # no echo, no line editing: bytes as they are
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, FRAME)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
        self.queue.put_nowait(data)

    async def read(self) -> bytes:
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


class Consoles:
    """The `vnc` and `console` session handlers of one node."""

    def __init__(self, hv: Hypervisor, store: EventStore, *, node: str) -> None:
        self.hv = hv
        self.store = store
        self.node = node

    async def _domain_xml(self, req: SessionOpen) -> str:
        await running_here(self.store, req, node=self.node)
        return await self.hv.xml(f"{req.namespace}_{req.name}")

    async def vnc(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        port = vnc_port(await self._domain_xml(req))
        if port is None:
            raise ValidationError(f'VMI "{req.name}" has no VNC display')
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as err:
            raise ValidationError(f"cannot reach the VNC server of {req.name}: {err}") from err

        async def body(pipe: Pipe) -> None:
            await relay_socket(pipe, reader, writer)

        return {"port": port}, body

    async def console(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        path = console_pty(await self._domain_xml(req))
        if path is None:
            raise ValidationError(f'VMI "{req.name}" has no serial console')
        try:
            pty = Pty(path)
        except OSError as err:
            raise ValidationError(f"cannot open the console of {req.name}: {err}") from err

        async def body(pipe: Pipe) -> None:
            try:
                await relay(pipe, read=pty.read, write=pty.write)
            finally:
                pty.close()

        return {}, body
