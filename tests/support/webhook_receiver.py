"""A real HTTP endpoint for webhook tests: records every request, answers as the test says.

Every request is checked the way a subscriber would: the signature with the `standardwebhooks`
library, the body parsed as a CloudEvent with the `cloudevents` SDK.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook

Answer = Callable[["Got"], Awaitable[web.StreamResponse]]


@dataclass
class Got:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    event: Any = None  # the parsed CloudEvent

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


async def ok(_: Got) -> web.StreamResponse:
    return web.Response(status=204)


@dataclass
class Receiver:
    secrets: list[str]
    answer: Answer = ok
    got: list[Got] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        # Cancel a handler when its client hangs up, as a real server would stop working for it.
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        for secret in self.secrets:  # raises: the test sees a 500 and a failing check below
            Webhook(secret).verify(body, headers, json_parse=False)
        event = from_http_event(HTTPMessage(headers=headers, body=body))
        got = Got(headers, body, time.monotonic(), event)
        self.got.append(got)
        return await self.answer(got)

    async def until(self, ok: Callable[[list[Got]], bool], *, within: float = 30) -> None:
        for _ in range(int(within / 0.05)):
            if ok(self.got):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the receiver never saw what was expected; got {len(self.got)}")

    def first_ids(self) -> list[str]:
        """Webhook ids in order of first arrival."""
        seen: dict[str, None] = {}
        for g in self.got:
            seen.setdefault(g.webhook_id, None)
        return list(seen)
