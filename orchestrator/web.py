"""The orchestrator's read-only web view: `/` lists the VMs, `/vm/<namespace>/<name>` draws one
VM's life. GET and HEAD only; nothing here can change anything.

A few lines of HTTP/1.1 on asyncio streams rather than a web framework: two pages, no forms, no
sessions, and one dependency fewer in the control plane. Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime
from html import escape
from typing import Final
from urllib.parse import unquote

from nats.aio.client import Client

from bus.history import entries, read_history
from events.errors import ValidationError, VirtbusError
from events.names import Ref
from orchestrator import webpage
from orchestrator.readmodel import ReadModel

log = logging.getLogger("virtbus.web")
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   500: "Internal Server Error"}  # fmt: skip
_MAX_HEADER: Final = 16_384
PORT_ENV: Final = "VIRTBUS_WEB_PORT"


def configured_port() -> int | None:
    """$VIRTBUS_WEB_PORT, if set: the port the orchestrator serves the web view on."""
    value = os.environ.get(PORT_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) > 65535:
        raise ValidationError(f"{PORT_ENV}: {value!r} is not a port number", field=PORT_ENV)
    return int(value)


class Web:
    def __init__(
        self, nc: Client, readmodel: ReadModel, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.nc = nc
        self.readmodel = readmodel
        self.host = host
        self.port = port  # 0: a free port, known after `start`
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def page(self, path: str) -> tuple[int, str]:
        """(status, HTML) for `path`."""
        now = datetime.now(UTC)
        if path == "/":
            return 200, webpage.vm_list(await self.readmodel.vms(include_deleted=True), now=now)
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "vm":
            return 404, "<h1>Not found</h1>"
        try:
            ref = Ref.vm(unquote(parts[2]), unquote(parts[1]))
            # The read model is here: its index is read in-process, not asked of virtbus-api.
            history = await read_history(self.nc, ref, index_of=self.readmodel.history_index)
        except VirtbusError as err:  # a bad name, a broken chain, a bus that does not answer
            return 400, f"<h1>Cannot show this VM</h1><p>{escape(str(err))}</p>"
        if not history.events:
            return 404, f"<h1>No VM {escape(str(ref))}</h1>"
        return 200, webpage.timeline(ref.namespace, ref.name, entries(history), now=now)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = [*head[:_MAX_HEADER].decode("latin-1").split(" ", 2), "", ""]
            if method not in ("GET", "HEAD"):
                status, body = 405, "<h1>Read-only: GET only</h1>"
            else:
                status, body = await self.page(path.split("?", 1)[0])
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                "Content-Type: text/html; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else data)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):  # fmt: skip
            pass  # a client that went away or never finished its request
        except Exception:
            log.exception("web request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
