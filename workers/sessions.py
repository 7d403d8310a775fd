"""The node's end of client sessions (uploads, VNC, serial console) over `bus.tunnel`.

One subscription per node answers `virt.session.<node>.*`: the handler for the kind checks the
request (refusing it with a reason the client prints), and the session then runs in its own task
until either end closes. Stopping the worker ends every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.store import EventStore
from bus.tunnel import NODE, Pipe, SessionOpen, SessionReply, open_subject, session_parts
from bus.vms import VMRepository
from events.errors import ValidationError, VirtbusError
from events.names import Ref, check_name
from events.state import RUNNING, VMState

log = logging.getLogger("virtbus.sessions")

Body = Callable[[Pipe], Awaitable[None]]
# A handler checks the request and returns what the client is told plus the session's body.
Handler = Callable[[SessionOpen], Awaitable[tuple[dict[str, Any], Body]]]


async def running_here(store: EventStore, req: SessionOpen, *, node: str) -> VMState:
    """The VM a session asks about, as the log has it, if its instance runs on `node`."""
    s, _ = await VMRepository(store).get(Ref.vm(req.name, req.namespace))
    if not s.exists or s.phase != RUNNING or s.node != node:
        where = f" on {node}" if s.node and s.node != node else ""
        raise ValidationError(f'VirtualMachineInstance "{req.name}" is not running{where}')
    return s


class Sessions:
    def __init__(self, nc: Client, *, node: str, handlers: dict[str, Handler]) -> None:
        self.nc = nc
        self.node = node
        self.handlers = handlers
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        every = open_subject(self.node, "*", namespace="*", caller="*")
        sub = await self.nc.subscribe(every, cb=self._on_open)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reply(self, msg: Msg, reply: SessionReply) -> None:
        with contextlib.suppress(Exception):
            await msg.respond(msgspec.json.encode(reply))

    async def _on_open(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=SessionOpen)
            check_name(req.name, field="name")
            check_name(req.namespace, field="namespace")
            if not req.sid.isalnum():
                raise VirtbusError(f"sid: {req.sid!r} is not a session id")
            # The subject is what the server let the caller ask for: the body must say the same
            asked = session_parts(msg.subject)
            if asked is None or asked[:2] != (req.kind, req.namespace):
                raise VirtbusError(f"the request names {req.kind} in {req.namespace}, but was "
                                   f"sent on {msg.subject}")  # fmt: skip
        except (msgspec.DecodeError, msgspec.ValidationError, VirtbusError) as err:
            await self._reply(msg, SessionReply(ok=False, error=f"bad session request: {err}"))
            return
        handler = self.handlers.get(req.kind)
        if handler is None:
            await self._reply(msg, SessionReply(ok=False, error=f"unknown session {req.kind!r}"))
            return
        try:
            info, body = await handler(req)
        except (VirtbusError, OSError) as err:
            text = err.message if isinstance(err, VirtbusError) else f"{req.kind}: {err}"
            await self._reply(msg, SessionReply(ok=False, error=text))
            return
        pipe = await Pipe(self.nc, sid=req.sid, end=NODE).start()
        task = asyncio.create_task(self._run(pipe, body), name=f"session-{req.kind}-{req.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await self._reply(msg, SessionReply(ok=True, info=info))

    async def _run(self, pipe: Pipe, body: Body) -> None:
        try:
            await body(pipe)
        except VirtbusError as err:
            log.warning("session %s failed: %s", pipe.sid, err)
        except Exception:  # a session's bug must not go unseen, nor take the worker down
            log.exception("session %s failed", pipe.sid)
        finally:
            await pipe.close("closed by the node")
