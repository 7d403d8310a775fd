"""Byte streams between a client and a node worker over core NATS, with flow control.

The bus is the only path between clients and nodes, so an image upload, a VNC connection and a
serial console all travel as frames on `virt.pipe.<session>.<end>`. Core NATS drops messages for a
subscriber that falls behind, so each sender may have at most `window` frames unacknowledged; the
receiver returns credit as the application consumes frames. Frames carry a sequence number, so a
lost one is detected rather than silently corrupting the stream. Either end closes with a reason,
and the other end reads the end of the stream.

A session starts with a request on `virt.session.<node>.<kind>` (`SessionOpen`); the node answers
`SessionReply` once it has checked the request, and the frames flow from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.connect import identity
from events.errors import BusUnavailable, VirtbusError

SEQ: Final = "Vb-Seq"
ACK: Final = "Vb-Ack"
CLOSE: Final = "Vb-Close"
CLIENT, NODE = "c", "n"
WINDOW: Final = 16
FRAME: Final = 64 * 1024


Reader = Callable[[], Awaitable[bytes]]  # b"" at the end
Writer = Callable[[bytes], Awaitable[None]]


class PipeClosed(VirtbusError):
    """The other end closed the stream (or it broke) while we were still sending."""


class SessionOpen(msgspec.Struct, frozen=True, kw_only=True):
    sid: str
    kind: str
    namespace: str
    name: str
    params: dict[str, Any] = {}


class SessionReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    info: dict[str, Any] = {}


ANONYMOUS = "_"  # the caller's token on an open bus, where no one has a name


def open_subject(node: str, kind: str, *, namespace: str, caller: str) -> str:
    """Where a session is asked of `node`: the namespace of what it opens and the caller's name
    are subject tokens, so on a secured bus the server lets a user ask only in its namespaces,
    under its own name (`bus/roles.py`), and the node checks the request names that namespace."""
    return f"virt.session.{node}.{kind}.{namespace}.{caller}"


def session_parts(subject: str) -> tuple[str, str, str] | None:
    """(kind, namespace, caller) of a session subject, or None for another subject."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[:2] != ["virt", "session"]:
        return None
    return parts[3], parts[4], parts[5]


def pipe_subject(sid: str, end: str) -> str:
    return f"virt.pipe.{sid}.{end}"


class Pipe:
    """One end of a stream: `send` waits for credit, `recv` returns None at the end."""

    def __init__(self, nc: Client, *, sid: str, end: str, window: int = WINDOW) -> None:
        self.nc = nc
        self.sid = sid
        self.end = end
        self.window = window
        self.peer = pipe_subject(sid, NODE if end == CLIENT else CLIENT)
        self.reason: str | None = None  # why the stream ended: the peer's word, or ours
        self._sub: Subscription | None = None
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._sent = self._acked = 0  # frames sent, frames the peer consumed
        self._expected = 1
        self._consumed = self._credited = 0
        self._credit = asyncio.Event()
        self.ended = asyncio.Event()  # set when the stream ends, from either side
        self._closed = False

    async def start(self) -> Pipe:
        self._sub = await self.nc.subscribe(pipe_subject(self.sid, self.end), cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        hdrs = msg.headers or {}
        if ACK in hdrs:
            self._acked = max(self._acked, int(hdrs[ACK]))
            self._credit.set()
        elif CLOSE in hdrs:
            self._end(hdrs[CLOSE] or "closed")
        elif SEQ in hdrs and self.reason is None:
            if int(hdrs[SEQ]) != self._expected:
                self._end(f"frame {self._expected} was lost")
                return
            self._expected += 1
            self._frames.put_nowait(msg.data)

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._frames.put_nowait(None)
        self._credit.set()
        self.ended.set()

    async def send(self, data: bytes, *, frame: int = FRAME) -> None:
        for at in range(0, len(data), frame):
            while self._sent - self._acked >= self.window and self.reason is None:
                self._credit.clear()
                await self._credit.wait()
            if self.reason is not None:
                raise PipeClosed(f"the stream ended: {self.reason}")
            self._sent += 1
            await self.nc.publish(self.peer, data[at : at + frame],
                                  headers={SEQ: str(self._sent)})  # fmt: skip

    async def frames(self, *, idle_s: float, idle: Callable[[], Exception]) -> AsyncIterator[bytes]:
        """Every frame until the stream ends (see `reason`); `idle()` is raised when nothing
        came for `idle_s`: a receiving end's whole loop."""
        while True:
            try:
                data = await self.recv(idle_s=idle_s)
            except TimeoutError:
                raise idle() from None
            if data is None:
                return
            yield data

    async def recv(self, *, idle_s: float | None = None) -> bytes | None:
        """The next frame, or None once the stream has ended (see `reason`); TimeoutError when
        nothing came for `idle_s`."""
        data = await asyncio.wait_for(self._frames.get(), idle_s)
        if data is None:
            self._frames.put_nowait(None)  # every later recv sees the end too
            return None
        self._consumed += 1
        if self._consumed - self._credited >= max(1, self.window // 2):
            self._credited = self._consumed
            with contextlib.suppress(Exception):
                await self.nc.publish(self.peer, b"", headers={ACK: str(self._consumed)})
        return data

    async def close(self, reason: str = "closed") -> None:
        """Tell the peer (unless it ended the stream) and stop listening; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.reason is None:
            self._end(reason)
            with contextlib.suppress(Exception):
                await self.nc.publish(self.peer, b"", headers={CLOSE: reason})
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


async def relay(pipe: Pipe, *, read: Reader, write: Writer) -> None:
    """Bytes both ways until one side ends; the other is then ended too."""

    async def outbound() -> None:
        while data := await read():
            await pipe.send(data)

    async def inbound() -> None:
        while (data := await pipe.recv()) is not None:
            await write(data)

    tasks = [asyncio.create_task(outbound(), name=f"relay-out-{pipe.sid}"),
             asyncio.create_task(inbound(), name=f"relay-in-{pipe.sid}")]  # fmt: skip
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, Exception) and not isinstance(r, PipeClosed | OSError):
            raise r


async def relay_socket(pipe: Pipe, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:  # fmt: skip
    """`relay` between the pipe and a TCP connection, closed once either side ends."""

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        await relay(pipe, read=lambda: reader.read(FRAME), write=write)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def connect(
    nc: Client, *, node: str, kind: str, namespace: str, name: str,
    params: dict[str, Any] | None = None, wait_s: float = 15.0,
) -> tuple[Pipe, dict[str, Any]]:  # fmt: skip
    """Open a session on `node`; the pipe listens before the request goes out, so no frame the
    node sends right after its answer is lost."""
    pipe = await Pipe(nc, sid=uuid.uuid4().hex, end=CLIENT).start()
    req = SessionOpen(sid=pipe.sid, kind=kind, namespace=namespace, name=name,
                      params=params or {})  # fmt: skip
    try:
        subject = open_subject(node, kind, namespace=namespace, caller=identity(nc) or ANONYMOUS)
        msg = await nc.request(subject, msgspec.json.encode(req), timeout=wait_s)
        reply = msgspec.json.decode(msg.data, type=SessionReply)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        await pipe.close("bad reply")
        raise VirtbusError(f"node {node} answered the {kind} session with garbage: {err}") from err
    except Exception as err:  # no responders, timeout: the node's worker is not there
        await pipe.close("no answer")
        raise BusUnavailable(
            f"node {node} did not answer the {kind} session request (is its worker running?)"
        ) from err
    if not reply.ok:
        await pipe.close("refused")
        raise VirtbusError(reply.error)
    return pipe, reply.info
