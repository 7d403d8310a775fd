"""The `virtbus-api` NATS micro service: request/reply doors for clients that want an answer now.

`virt.api.command` forwards a command to the command stream (the same path a fire-and-forget
publish takes, so both doors are judged by the same code) and replies with its outcome;
`virt.api.get` answers from the read model. Discoverable through `$SRV.PING|INFO|STATS`. Each also
answers as `virt.api.<op>.<name>`: the caller's name, which on a secured bus the server pins (a
user may publish there only under its own), goes on as the command's actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Coroutine
from typing import Any, Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from bus.publish import Publisher
from events import commands as c
from events.envelope import decode_command, encode
from events.errors import BusUnavailable, ValidationError
from events.names import API_PREFIX, CLUSTER, CLUSTER_SCOPED, COMMANDS_STREAM, outcome_subject
from events.protocol import Answer, Query, continue_token, continued_after
from events.users import may_read, read_scope
from orchestrator.intake import Intake
from orchestrator.lease import LeaseLost
from orchestrator.readmodel import ReadModel

log = logging.getLogger("virtbus.api")

SERVICE = "virtbus-api"
INVALID_SUBJECT = "virt.cmd.intake._.rejected.invalid"
_TOKEN = re.compile(r"^[a-z0-9-]{1,63}$")
_KINDS = {cls.__name__: cls for cls in c.COMMAND_CLASSES}
OUTCOME_WAIT_S = 15.0
PUBLISH_WAIT_S = 5.0  # the command stream's ack (a leader's election takes longer: send again)
_OUTCOME_PREFIX = outcome_subject("")


def command_subject(body: dict[str, Any]) -> str:
    """Where a command body belongs on the stream; an unaddressable one goes to `intake`."""
    cls = _KINDS.get(str(body.get("kind")))
    name, ns = body.get("name"), body.get("namespace", "default")
    if cls is None or not isinstance(name, str) or not isinstance(ns, str):
        return INVALID_SUBJECT
    if cls.aggregate in CLUSTER_SCOPED:
        ns = CLUSTER
    if not _TOKEN.match(name) or not (ns == CLUSTER or _TOKEN.match(ns)):
        return INVALID_SUBJECT
    return f"virt.cmd.{cls.aggregate}.{ns}.{name}.{cls.__name__}"


class Api:
    def __init__(self, nc: Client, *, intake: Intake, readmodel: ReadModel) -> None:
        self.nc = nc
        self.intake = intake
        self.readmodel = readmodel
        self.service: Service | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # One subscription for every outcome, not one per command: a SUB and an UNSUB per command
        # were a fifth of the API's bus traffic.
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._outcomes: Subscription | None = None
        # Commands go to their stream as the store's appends do (on a lean connection of their
        # own where the login allows), not through nats-py's publish.
        self._commands = Publisher(nc, stream=COMMANDS_STREAM)

    async def start(self) -> None:
        self._outcomes = await self.nc.subscribe(outcome_subject(">"), cb=self._on_outcome)
        self.service = await add_service(
            self.nc, name=SERVICE, version="0.1.0",
            description="virtbus command intake and read model", queue_group=SERVICE,
        )  # fmt: skip
        group = self.service.add_group(name=API_PREFIX)
        await group.add_endpoint(name="command", handler=self._command)
        await group.add_endpoint(name="get", handler=self._get)
        # The same doors with the caller's name last: on a secured bus a client may publish only
        # under its own name there, so the command is recorded as who really asked.
        await group.add_endpoint(name="command-as", subject="command.*", handler=self._command)
        await group.add_endpoint(name="get-as", subject="get.*", handler=self._get)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        self._commands.close()
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._outcomes is not None:
            await self._outcomes.unsubscribe()

    async def _on_outcome(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.subject.removeprefix(_OUTCOME_PREFIX))
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.data)

    async def _command(self, req: Request) -> None:
        # nats-py runs one handler call at a time per endpoint: answer each in its own task, or
        # every client waits for every other client's command to be judged.
        task = asyncio.create_task(_answering(req, self._answer(req)),
                                   name=f"api-command-{len(self._inflight)}")  # fmt: skip
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _answer(self, req: Request) -> None:
        raw, cid, subject = req.data, uuid.uuid4().hex, INVALID_SUBJECT
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        actor = _caller(req.subject)
        if isinstance(body, dict):
            cid = str(body.get("id") or cid)
            body["id"] = cid
            if actor:
                body["actor"] = actor
            raw, subject = encode(body), command_subject(body)
        if actor:
            subject = f"{subject}.{actor}"
        if "." in cid or "*" in cid or ">" in cid:  # not one subject token: no outcome subject
            await req.respond(
                encode(
                    c.Outcome(
                        command_id=cid,
                        accepted=False,
                        field="id",
                        reason=f"id {cid!r}: no '.', '*' or '>'",
                    )
                )
            )
            return
        waiter = self._waiting[cid] = asyncio.get_running_loop().create_future()
        try:
            headers = {"Nats-Msg-Id": cid}
            if trace := (req.headers or {}).get("traceparent"):
                headers["traceparent"] = trace  # the client's trace goes on with the command
            ack = await self._commands.send([(subject, raw, headers)], within=PUBLISH_WAIT_S)
            if ack.duplicate:  # stored before: its outcome is in the log
                try:
                    await req.respond(encode(await self._replayed_outcome(raw, cid)))
                except LeaseLost:  # a standby's: the holder judges it, as it judged the first
                    await req.respond_error("504", f"command {cid} is queued; its outcome "
                                            "comes from the orchestrator that leads")  # fmt: skip
                return
            await req.respond(await asyncio.wait_for(waiter, OUTCOME_WAIT_S))
        except TimeoutError:
            await req.respond_error("504", f"no outcome for command {cid} yet; it is queued")
        except BusUnavailable as err:  # it may or may not be stored: the same id is taken once
            await req.respond_error("503", f"command {cid}: {err}; send it again")
        finally:
            if self._waiting.get(cid) is waiter:
                del self._waiting[cid]

    async def _replayed_outcome(self, raw: bytes, cid: str) -> c.Outcome:
        try:
            cmd = decode_command(raw)
        except ValidationError as err:
            return c.Outcome(command_id=cid, accepted=False, reason=err.message, field=err.field)
        return await self.intake.judge(cmd)

    async def _get(self, req: Request) -> None:
        await _answering(req, self._get_answer(req))

    async def _get_answer(self, req: Request) -> None:
        try:
            q = msgspec.json.decode(req.data or b"{}", type=Query)
            after = continued_after(q.continue_) if q.continue_ else None
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            await req.respond_error("400", f"bad query: {err}")
            return
        except ValidationError as err:
            await req.respond_error("400", f"bad query: {err.field}: {err.message}")
            return
        scope: tuple[str, ...] | None = None  # the namespaces the caller may read; None: all
        caller, identities = _caller(req.subject), self.intake.identities
        if caller and identities is not None and q.what != "nodes":
            user = await identities.user(caller)
            try:  # one namespace named: the caller may read it, or it is told it may not
                if q.namespace is not None or q.name is not None:
                    may_read(user, q.namespace or "default",
                             verb="list" if q.name is None else "get")  # fmt: skip
            except ValidationError as err:
                await req.respond_error("403", err.message)
                return
            scope = read_scope(user)
        rm = self.readmodel
        answer = Answer(position=await rm.position())
        if q.what == "history" and q.name is not None:
            seqs = await rm.history_seqs(q.namespace or "default", q.name)
            answer = Answer(history=seqs, position=answer.position)
        elif q.what == "nodes":
            answer = Answer(nodes=await rm.nodes(), position=answer.position)
        elif q.name is not None:
            vm = await rm.vm(q.namespace or "default", q.name)
            answer = Answer(vms=[vm] if vm else [], position=answer.position)
        else:
            page = await self._vm_page(q, after=after, scope=scope, position=answer.position)
            await req.respond(page)
            return
        await req.respond(encode(answer))

    async def _vm_page(
        self, q: Query, *, after: tuple[str, str] | None, scope: tuple[str, ...] | None,
        position: int,
    ) -> bytes:  # fmt: skip
        """A page of a VM list: the read model's rows spliced into the answer as they are stored
        (no decode and encode again), sized to fit one message, with the next page's token."""
        namespaces = (q.namespace,) if q.namespace is not None else scope
        budget = min(self.nc.max_payload, _PAGE_BYTES) - _PAGE_SLACK
        rows, last = await self.readmodel.vm_page(
            namespaces=namespaces, after=after, include_deleted=q.include_deleted,
            limit=q.limit, budget=budget)  # fmt: skip
        token = continue_token(*last) if last is not None else ""
        return b'{"vms":[%b],"position":%d,"continue":"%b"}' % (
            b",".join(rows),
            position,
            token.encode(),
        )


_PAGE_BYTES: Final = 1 << 20  # a page fits a default-configured server's max_payload
_PAGE_SLACK: Final = 4096  # the answer's own fields and the message's headers


def _caller(subject: str) -> str:
    """The name a `virt.api.<op>.<name>` request was sent under ("" on the nameless door)."""
    parts = subject.split(".")
    return parts[3] if len(parts) == 4 else ""


async def _answering(req: Request, answer: Coroutine[Any, Any, None]) -> None:
    """Run one request's answer; a fault in it is this request's 500, never the service's end."""
    try:
        await answer
    except Exception as err:
        log.exception("virtbus-api: %s failed", req.subject)
        with contextlib.suppress(Exception):
            await req.respond_error("500", f"virtbus-api failed: {type(err).__name__}: {err}")
