"""UDP over a `bus.tunnel` pipe: one datagram is one frame, both ways (`port-forward udp/...`).

A pipe already keeps frame boundaries, and a datagram (at most 65,507 bytes) fits one frame, so
the CLI's end (one session per local peer, as virtctl opens one tunnel per peer) and the node's
end (a socket connected to the VMI's address and port) share this relay: datagrams queued by a
socket's protocol go out as frames, frames come in as datagrams. UDP has no end, so a session
ends after `idle_s` without a datagram either way, or when the socket reports an error (the
guest's "port unreachable", say).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bus.tunnel import FRAME, Pipe, relay

IDLE_S = 300.0  # as long as a conntrack entry of an answered UDP flow, give or take
BACKLOG = 1024  # datagrams waiting for the pipe; more are dropped, as a full socket buffer would


class Inbox:
    """Datagrams waiting to go out on a pipe; `close(reason)` ends the session after them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=BACKLOG)
        self.reason: str | None = None
        self.dropped = 0

    def put(self, data: bytes) -> None:
        if data and self.reason is None:  # an empty datagram would read as the end: dropped
            try:
                self.queue.put_nowait(data[:FRAME])
            except asyncio.QueueFull:  # a sender faster than the bus: UDP's answer is loss
                self.dropped += 1

    def close(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            if self.queue.full():  # the end must get in: the oldest datagram makes room
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class Connected(asyncio.DatagramProtocol):
    """A connected UDP socket's datagrams into an `Inbox`; its errors end the session."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.inbox.put(data)

    def error_received(self, exc: Exception) -> None:
        self.inbox.close(str(exc) or type(exc).__name__)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.close(str(exc) if exc else "the socket closed")


async def relay_datagrams(
    pipe: Pipe, inbox: Inbox, *, send: Callable[[bytes], None], idle_s: float = IDLE_S
) -> None:
    """Frames from the pipe go out through `send`, the inbox's datagrams into the pipe, until
    either end closes or nothing moved either way for `idle_s`."""
    last = time.monotonic()

    async def read() -> bytes:
        nonlocal last
        while True:
            left = last + idle_s - time.monotonic()
            try:
                data = await asyncio.wait_for(inbox.queue.get(), max(left, 0.0))
            except TimeoutError:
                if time.monotonic() - last < idle_s:  # a frame came in meanwhile
                    continue
                inbox.close(f"no datagram for {idle_s:g}s")
                return b""
            if data is None:
                return b""
            last = time.monotonic()
            return data

    async def write(data: bytes) -> None:
        nonlocal last
        last = time.monotonic()
        send(data)

    await relay(pipe, read=read, write=write)
