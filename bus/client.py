"""The CLI's side of the bus: send a command to `virtbus-api`, query the read model, watch the log.

Every verb goes through here, so connection errors, timeouts and "no orchestrator answering"
read the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bus.connect import Access, by_certificate, connect, identity
from bus.roles import certified_scope
from bus.telemetry import new_traceparent
from events import commands as c
from events.envelope import encode
from events.errors import BusUnavailable, VirtbusError
from events.names import API_PREFIX
from events.protocol import Answer, Query

_OUTCOME = msgspec.json.Decoder(c.Outcome)
_ANSWER = msgspec.json.Decoder(Answer)
_ATTEMPT_S: Final = 5.0


class Rejected(VirtbusError):
    """The orchestrator judged the command and said no."""


@contextlib.asynccontextmanager
async def session(url: str) -> AsyncIterator[Client]:
    nc = await login(url, name="virtbus-cli")
    try:
        yield nc
    finally:
        await nc.close()


async def login(url: str, *, name: str, access: Access | None = None) -> Client:
    """`connect`, and for a login by certificate, its read scope (its role, from the log)."""
    nc = await connect(url, name=name, access=access)
    me = identity(nc)
    if me is not None and by_certificate(nc):
        try:
            await certified_scope(nc, me)
        except BaseException:
            await nc.close()
            raise
    return nc


async def _request(nc: Client, endpoint: str, body: bytes, *, wait_s: float) -> bytes:
    # Each request starts a trace that the command's events, work and observations carry.
    headers = {"traceparent": new_traceparent()}
    me = identity(nc)  # on a secured bus, the door with our name on it (the only one we may use)
    subject = f"{API_PREFIX}.{endpoint}.{me}" if me else f"{API_PREFIX}.{endpoint}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    try:
        while True:
            # Asked again after a silence: the API is a queue group, and a member that hangs
            # (a paused orchestrator, until the server gives up on it) swallows what it is
            # handed; the next ask may reach another. A command's id makes asking twice safe.
            attempt = min(deadline - loop.time(), _ATTEMPT_S)
            try:
                msg = await nc.request(subject, body, timeout=attempt, headers=headers)
                break
            except (NatsTimeout, TimeoutError):
                if deadline - loop.time() < 0.1:
                    raise
    except NoRespondersError:
        raise BusUnavailable(
            f"no virtbus orchestrator is answering on {_url(nc)}; start one with `virtbus up`"
        ) from None
    except (NatsTimeout, TimeoutError):
        raise BusUnavailable(f"virtbus-api did not answer within {wait_s:.0f}s") from None
    if msg.headers and msg.headers.get("Nats-Service-Error-Code"):
        raise VirtbusError(msg.headers.get("Nats-Service-Error", "virtbus-api failed"))
    return msg.data


async def send(nc: Client, cmd: c.Command, *, wait_s: float = 20) -> c.Outcome:
    """Carry out `cmd`; raise Rejected (reason, field) when the orchestrator says no."""
    if not cmd.id:  # named here, so that asking again is the same command, never a second one
        cmd = msgspec.structs.replace(cmd, id=uuid.uuid4().hex)
    outcome = _OUTCOME.decode(await _request(nc, "command", encode(cmd), wait_s=wait_s))
    if not outcome.accepted:
        raise Rejected(outcome.reason, field=outcome.field)
    return outcome


async def query(nc: Client, q: Query, *, wait_s: float = 10) -> Answer:
    """The answer to `q`; a list of VMs is asked page by page (`q.limit` VMs a page, like
    kubectl's --chunk-size) and comes back whole, at its first page's position (the later pages
    are at least as fresh)."""
    answer = await query_page(nc, q, wait_s=wait_s)
    vms, token = list(answer.vms), answer.continue_
    while token:
        page = await query_page(nc, msgspec.structs.replace(q, continue_=token), wait_s=wait_s)
        vms += page.vms
        token = page.continue_
    return msgspec.structs.replace(answer, vms=vms, continue_="")


async def query_page(nc: Client, q: Query, *, wait_s: float = 10) -> Answer:
    """One answer as virtbus-api gives it: for a list of VMs, one page and the next's token."""
    return _ANSWER.decode(await _request(nc, "get", encode(q), wait_s=wait_s))


def _url(nc: Client) -> str:
    return nc.connected_url.geturl() if nc.connected_url else "the bus"
