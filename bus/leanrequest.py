"""Single-message appends over a lean connection of their own.

Every append is a request answered by JetStream's PubAck. nats-py spends ~100 µs of CPU on one
(a future and a timer, a `Msg`, the reply's headers parsed, several coroutine hops): half of an
append's time on this machine. This writes the HPUB frame itself on a connection of its own
(logged in as `leanpull` does) and matches the answers by reply subject in a reader task that
lives only while answers are awaited, so an idle store leaves nothing running.

What it cannot do is said before the request goes out, by `LeanUnavailable`, and the store sends
through nats-py instead: a login it cannot make, a server it cannot reach (nats-py then waits for
it to come back, as it always has). A connection lost after the request went out is
`BusUnavailable`, as a nats-py timeout is: the append may or may not be stored, and the command
id and the expected sequence make a retry safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from typing import Final

from bus.leanlogin import Login, open_lean
from bus.leanpull import frames, status
from events.errors import BusUnavailable

READ_SIZE: Final = 1 << 16
IDLE_CHECK_S: Final = 0.5  # how soon a reader with nothing left to await notices and ends
FRESH_S: Final = 60.0  # idle longer than this: a new connection (nats-server pings every 2 min)
_CRLF: Final = b"\r\n"
_NEWLINES: Final = str.maketrans("\r\n", "  ")


class LeanRequester:
    """Requests with one answer each (JetStream publishes) on a connection of their own."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._inbox = b""
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._task: asyncio.Task[None] | None = None
        self._task_reader: asyncio.StreamReader | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []  # frames of this turn of the loop, written together
        self._used = 0.0
        self._connecting = asyncio.Lock()

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str], *, within: float
    ) -> bytes:
        """The answer's payload; LeanUnavailable before anything was sent, else BusUnavailable."""
        if self._stale():
            async with self._connecting:  # one connection, however many appends find none
                if self._stale():
                    await self._connect()
        assert self._writer is not None
        self._used = time.monotonic()
        token = b"%d" % next(self._ids)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[token] = answer
        lines = (b"%s: %s\r\n" % (k.encode(), v.translate(_NEWLINES).encode())
                 for k, v in headers.items())  # fmt: skip
        block = b"NATS/1.0\r\n" + b"".join(lines) + _CRLF
        self._out.append(b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            subject.encode(), self._inbox, token, len(block), len(block) + len(payload), block,
            payload,
        ))  # fmt: skip
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        if self._task is None or self._task.done() or self._task_reader is not self._reader:
            # (a reader of a connection since replaced ends on its own within IDLE_CHECK_S)
            self._task_reader = self._reader
            self._task = asyncio.create_task(self._answers(), name="lean-request-answers")
        try:
            return await asyncio.wait_for(answer, within)
        except TimeoutError as err:
            raise BusUnavailable(f"no answer from {subject} within {within:g} s") from err
        finally:
            self._pending.pop(token, None)

    def _flush(self) -> None:
        """Write every frame of this turn of the loop at once: over TLS each write is a record
        (and a send), so appends made side by side share them."""
        if self._out and self._writer is not None:
            self._writer.write(b"".join(self._out))
        self._out.clear()

    def _stale(self) -> bool:
        return self._writer is None or self._writer.is_closing() or self._gone()

    def _gone(self) -> bool:
        """Whether the connection is better made anew before anything is written: the server
        closed it while it idled (a restart), or it idled past the server's ping interval, when
        an unanswered PING may sit unread in front of that close."""
        if self._pending or self._reader is None:
            return False
        return self._reader.at_eof() or time.monotonic() - self._used > FRESH_S

    async def _connect(self) -> None:
        self._drop("the append connection was lost")  # whoever still waits on the old one
        reader, writer = await open_lean(self.login, limit=READ_SIZE)
        self._inbox = self.login.inbox + b".leanreq." + os.urandom(10).hex().encode() + b"."
        writer.write(b"SUB %s* 1\r\n" % self._inbox)
        self._reader, self._writer = reader, writer
        self._buf.clear()

    def _drop(self, why: str = "") -> None:
        """Forget the connection; whoever still waits on it hears `why`."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._out.clear()  # frames not yet written: their callers hear `why` below
        for answer in self._pending.values():
            if why and not answer.done():
                answer.set_exception(BusUnavailable(why))

    async def _answers(self) -> None:
        """Read answers into their futures until none is awaited (then end: nothing idles)."""
        reader, buf = self._reader, self._buf
        while self._pending and reader is not None and reader is self._reader:
            try:
                # Not wait_for: its inner task can finish the read just as the timer fires, and
                # the bytes read are dropped with it. Cancelled in place, a read leaves them in
                # the reader's buffer for the next one.
                async with asyncio.timeout(IDLE_CHECK_S):
                    chunk = await reader.read(READ_SIZE)
            except TimeoutError:
                continue
            except OSError as err:
                chunk, why = b"", f"the append connection broke: {err}"
            else:
                why = "the server closed the append connection"
            if reader is not self._reader:
                return  # replaced meanwhile: what it still had to say is moot
            if not chunk:
                self._drop(why)
                return
            buf += chunk
            if (error := self._frames()) is not None:
                self._drop(error)
                return

    def _frames(self) -> str | None:
        """Hand every whole frame in the buffer to its future; a -ERR is returned."""
        buf = self._buf
        for op, words, body, end in frames(buf):
            if op in (b"MSG", b"HMSG"):
                answer = self._pending.get(words[1].rpartition(b".")[2])
                if answer is None or answer.done():
                    continue
                if (code := status(buf, words, body).split(None, 1)[:1]) and code[0].isdigit():
                    answer.set_exception(BusUnavailable(f"no responders ({code[0]})"))  # 503
                else:
                    answer.set_result(bytes(buf[body:end]))
            elif op == b"PING" and self._writer is not None:
                self._writer.write(b"PONG\r\n")
            elif op == b"-ERR":
                return f"the server refused: {b' '.join(words).decode(errors='replace')}"
        return None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            self._drop("the store closed")
