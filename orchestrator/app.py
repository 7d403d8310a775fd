"""The orchestrator process: intake, controller, read model and API on one connection, with the
web view, the audit sealer and the webhook dispatcher when asked. Neighbours read each other
in-process, never over the bus: the intake judges against the controller's folded state, the web
view reads the read model.

Staged shutdown: `stop` is set, the API stops taking requests, each loop finishes the item in
hand and returns, then the connection drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from pathlib import Path

import msgspec
from nats.aio.client import Client

from bus.audit import Checkpointer, load_key
from bus.connect import identity
from bus.store import EventStore
from bus.tail import Tail
from bus.trust import Trust
from events.work import MigrationPolicy
from orchestrator.api import Api
from orchestrator.certlogin import CertLogin
from orchestrator.controller import Controller
from orchestrator.intake import Intake
from orchestrator.lease import TTL_S, Lease, LeaseLost
from orchestrator.lease import bucket as lease_bucket
from orchestrator.readmodel import ReadModel
from orchestrator.users import Identities
from orchestrator.web import Web, configured_port
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
    nc: Client, *, data_dir: Path, stop: asyncio.Event, node_grace_s: float = 10.0,
    audit_key: bytes | None = None, checkpoint_every_s: float = 60.0, web_port: int | None = None,
    migration_policy: MigrationPolicy | None = None, webhooks: bool = True,
    trust: Trust | None = None, webhooks_nc: Client | None = None, name: str | None = None,
    lease_ttl_s: float = TTL_S, vmi_cidr: str | None = None,
) -> None:  # fmt: skip
    """Run until `stop`; with an audit key (given, or $VIRTBUS_AUDIT_KEY[_FILE]) it also seals
    the log with a signed checkpoint every `checkpoint_every_s`; with a web port (given, or
    $VIRTBUS_WEB_PORT) it serves the read-only web view on 127.0.0.1; with `webhooks` (unless the
    dispatcher runs as its own process) it delivers to webhook subscribers. Logged in (a secured
    bus), it judges every caller by its role; with the stack's `trust` it also adds and revokes
    users, and tells the server who a client certificate names (certificate logins).
    `webhooks_nc`: the dispatcher's own connection (its own identity), else `nc`.

    Every orchestrator answers virtbus-api from its read model, and certificate logins; only the
    one holding the lease (`orchestrator/lease.py`; `name` tells them apart) judges, decides,
    delivers and seals. One that loses the lease raises LeaseLost after stopping: its supervisor
    starts it again, as a standby."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    audit_key = audit_key or load_key()
    web_port = configured_port() if web_port is None else web_port
    lease = Lease(await lease_bucket(nc), holder=name or _instance(), ttl_s=lease_ttl_s)

    # One store for the lease holder's writers: what the intake wrote the controller need not
    # look up before it writes next.
    writers = EventStore(nc, source="/virtbus/orchestrator", guard=lease.check)

    def writer(part: str) -> EventStore:
        return writers.sibling(source=f"/virtbus/orchestrator/{part}")

    intake = Intake(nc, writer("intake"))
    controller = Controller(nc, writer("controller"), node_grace_s=node_grace_s,
                            migration_policy=migration_policy)  # fmt: skip
    # The intake judges against the controller's folded state, not a read of the log of its own.
    intake.nodes, intake.volume_view = controller.node_views, controller.volume_view
    intake.active_migrations = controller.active_migrations
    intake.vm_admission, intake.admission = controller.vm_admission, controller.admission
    intake.vm_inference = controller.vm_inference
    intake.service_ports, intake.node_ports = controller.service_ports, controller.node_ports
    if identity(nc) is not None:
        intake.identities = Identities(nc, writer("users"), trust=trust)
        await intake.identities.push_revocations()  # the server agrees with the log from now
    read_store = EventStore(nc, source="/virtbus/orchestrator/readmodel")
    async with ReadModel(data_dir / "readmodel.sqlite", read_store, verify=False) as readmodel:
        controller.follows = readmodel.follows = Tail(read_store)  # one delivery of each event
        await readmodel.catch_up()
        api = Api(nc, intake=intake, readmodel=readmodel)
        leading = asyncio.Event()  # set with the lease: a standby's controller folds, warm
        tasks = [
            asyncio.create_task(readmodel.run(stop), name="orchestrator-readmodel"),
            asyncio.create_task(controller.run(stop, leading=leading),
                                name="orchestrator-controller"),
        ]  # fmt: skip
        if trust is not None and trust.callout is not None and intake.identities is not None:
            certlogin = CertLogin(nc, intake.identities, trust=trust).run(stop)
            tasks.append(asyncio.create_task(certlogin, name="orchestrator-certlogin"))
        await api.start()
        web = Web(nc, readmodel, port=web_port) if web_port is not None else None
        if web is not None:
            await web.start()
            log.info("web view on %s", web.url)
        lost: LeaseLost | None = None
        try:
            lease.on_regained = controller.resync
            if await lease.acquire(stop):  # a standby answers reads meanwhile
                leading.set()
                tasks += [
                    asyncio.create_task(lease.keep(stop), name="orchestrator-lease"),
                ]
                await seed_kubevirt(controller, intake)  # before any command is judged
                tasks.append(asyncio.create_task(intake.run(stop), name="orchestrator-intake"))
                if audit_key:
                    sealer = Checkpointer(nc, audit_key).run(stop, every_s=checkpoint_every_s)
                    tasks.append(asyncio.create_task(sealer, name="orchestrator-audit"))
                if webhooks:  # off when the dispatcher runs as its own process (one per bus)
                    dispatcher = Dispatcher(webhooks_nc or nc, data_dir=data_dir)
                    tasks.append(asyncio.create_task(dispatcher.run(stop),
                                                     name="orchestrator-webhooks"))  # fmt: skip
            done, _ = await asyncio.wait(
                [*tasks, asyncio.create_task(stop.wait(), name="orchestrator-stop")],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for t in done:
                if t.get_name() != "orchestrator-stop" and (err := t.exception()):
                    log.error("%s failed: %r", t.get_name(), err)
                    lost = err if isinstance(err, LeaseLost) else lost
        finally:
            stop.set()
            if web is not None:
                await web.stop()
            await api.stop()
            await drain(tasks, grace=SHUTDOWN_GRACE_S)
            await lease.release()
        if lost is not None:
            raise lost


async def seed_kubevirt(controller: Controller, intake: Intake) -> None:
    """`--migrations` seeds the KubeVirt object (or sets its migrations): an apply in its
    history, by the orchestrator, judged like any other."""
    await controller.caught_up()
    if (cmd := controller.settings.seed_command()) is not None:
        outcome = await intake.judge(msgspec.structs.replace(cmd, id=f"seed-{uuid.uuid4().hex}"))
        if not outcome.accepted:
            log.error("--migrations could not be applied to the KubeVirt object: %s",
                      outcome.reason)  # fmt: skip


def _instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
