"""A TCP proxy on loopback that a test can sever and heal: a network partition without root or
network namespaces. Put between two servers' routes, severing it cuts every connection it
carries and refuses new ones until healed (a refused dial is what a cut network looks like to
nats-server's route reconnects, which retry forever).
"""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """Forwards `127.0.0.1:<port>` to `127.0.0.1:<target>` from `start()` until `stop()`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.severed = False
        self.carried = 0  # connections forwarded in all
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def sever(self) -> None:
        """Cut every live connection (both ends see a reset) and refuse new ones."""
        self.severed = True
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()

    def heal(self) -> None:
        self.severed = False

    async def stop(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._pipes):
            t.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._live.add(writer)  # at once: a sever while this dials cuts it too
        if self.severed:
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._live.add(up_w)
        if self.severed or writer.transport.is_closing():  # severed while dialling
            writer.transport.abort()
            up_w.transport.abort()
            return
        self.carried += 1
        for src, dst, name in ((reader, up_w, "up"), (up_r, writer, "down")):
            task = asyncio.create_task(self._pipe(src, dst), name=f"proxy-{self.port}-{name}")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):  # (the other way still runs: it ends with this)
                dst.transport.abort()
