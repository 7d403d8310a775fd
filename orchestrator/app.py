"""The orchestrator process: intake, controller, read model and API on one connection.

Staged shutdown: `stop` is set, the API stops taking requests, each loop finishes the item in
hand and returns, then the connection drains.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nats.aio.client import Client

from events.store import EventStore
from orchestrator.api import Api
from orchestrator.controller import Controller
from orchestrator.intake import Intake
from orchestrator.readmodel import ReadModel
from orchestrator.webhooks.dispatcher import Dispatcher

log = logging.getLogger("virtbus.orchestrator")
SHUTDOWN_GRACE_S = 10.0


async def drain(tasks: list[asyncio.Task[None]], *, grace: float) -> None:
    """Staged shutdown's last stage: give each loop `grace` to finish, then cancel the rest,
    saying which and where it was stuck."""
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in t.get_stack(limit=8))
        log.warning("%s did not stop within %.0fs (at %s); cancelling it", t.get_name(), grace,
                    where)  # fmt: skip
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_orchestrator(
    nc: Client,
    *,
    data_dir: Path,
    stop: asyncio.Event,
    node_grace_s: float = 10.0,
    webhooks: bool = True,
) -> None:
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    intake = Intake(nc, EventStore(nc, source="/virtbus/orchestrator/intake"))
    controller = Controller(
        nc, EventStore(nc, source="/virtbus/orchestrator/controller"), node_grace_s=node_grace_s
    )
    read_store = EventStore(nc, source="/virtbus/orchestrator/readmodel")
    async with ReadModel(data_dir / "readmodel.sqlite", read_store, verify=False) as readmodel:
        await readmodel.catch_up()
        api = Api(nc, intake=intake, readmodel=readmodel)
        tasks = [
            asyncio.create_task(intake.run(stop), name="orchestrator-intake"),
            asyncio.create_task(controller.run(stop), name="orchestrator-controller"),
            asyncio.create_task(readmodel.run(stop), name="orchestrator-readmodel"),
        ]
        if webhooks:  # off when the dispatcher runs as its own process (one per bus)
            dispatcher = Dispatcher(nc, data_dir=data_dir)
            tasks.append(asyncio.create_task(dispatcher.run(stop), name="orchestrator-webhooks"))
        await api.start()
        try:
            done, _ = await asyncio.wait(
                [*tasks, asyncio.create_task(stop.wait(), name="orchestrator-stop")],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for t in done:
                if t.get_name() != "orchestrator-stop" and t.exception():
                    log.error("%s failed: %r", t.get_name(), t.exception())
        finally:
            stop.set()
            await api.stop()
            await drain(tasks, grace=SHUTDOWN_GRACE_S)
