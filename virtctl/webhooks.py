"""What the `virtbus webhook ...` verbs do over the bus.

Subscribing puts the signing secret in the secret bucket first and sends only its key in the
command, so the secret never reaches the command stream or the event log (both kept for
auditors). Deliveries come from the dispatcher's records, asked over NATS.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import typer
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bus import webhook_secrets as secrets
from bus.client import Rejected, send, session
from bus.store import EventStore
from events import commands as c
from events import render
from events.envelope import Recorded
from events.errors import BusUnavailable, ValidationError, VirtbusError
from events.webhooks import (
    DELIVERIES_SUBJECT,
    REDELIVER_SUBJECT,
    DeliveriesQuery,
    Delivery,
    RedeliverRequest,
    Reply,
    WebhookState,
    apply_webhook,
)

API_VERSION = "virtbus.io/v1"
_REPLY = msgspec.json.Decoder(Reply)


def webhook_object(s: WebhookState) -> dict[str, Any]:
    """kubectl-shaped; the secret and even its key stay out."""
    return {
        "apiVersion": API_VERSION, "kind": "Webhook",
        "metadata": {"name": s.name, "creationTimestamp": render.timestamp(s.created)},
        "spec": {"url": s.url, "types": s.types, "vmPattern": s.vm_pattern,
                 "fromStart": s.from_seq == 1, "since": render.timestamp(s.since)},
        "status": {"phase": "Disabled" if s.disabled_reason else "Active",
                   "reason": s.disabled_reason, "consumer": s.consumer},
    }  # fmt: skip


def delivery_object(d: Delivery) -> dict[str, Any]:
    def ts(v: float) -> str | None:
        return render.timestamp(datetime.fromtimestamp(v, UTC)) if v else None

    return {
        "apiVersion": API_VERSION, "kind": "WebhookDelivery",
        "metadata": {"name": f"{d.name}-{d.seq}"},
        "spec": {"webhook": d.name, "delivery": d.seq, "webhookId": d.webhook_id,
                 "type": d.type, "subject": d.subject},
        "status": {"phase": d.status, "attempts": d.attempts, "lastStatusCode": d.code,
                   "lastError": d.error, "firstAttemptTime": ts(d.first_at),
                   "lastAttemptTime": ts(d.last_at),
                   "nextAttemptTime": ts(d.next_at) if d.status == "Retrying" else None},
    }  # fmt: skip


def _print(doc: Any, output: str) -> None:
    typer.echo((render.to_json(doc) if output == "json" else render.to_yaml(doc)).rstrip())


async def subscriptions(nc: Client) -> dict[str, WebhookState]:
    states: dict[str, WebhookState] = {}

    def on(rec: Recorded) -> None:
        name = rec.subject.split(".")[3]
        states[name] = apply_webhook(states.get(name) or WebhookState(name=name), rec)

    await EventStore(nc).replay(on, subjects=["virt.webhook.>"])
    return {n: s for n, s in states.items() if s.exists}


async def add(url: str, cmd: c.AddWebhook, *, secret: str | None, output: str) -> int:
    generated = secret is None
    value = secret or secrets.generate()
    secrets.check_secret(value)
    async with session(url) as nc:
        js = nc.jetstream()
        ref = secrets.new_ref(cmd.name)
        await secrets.store(js, ref, value)
        try:
            await send(nc, msgspec.structs.replace(cmd, secret_ref=ref))
        except VirtbusError:
            await secrets.forget(js, ref)
            raise
        state = (await subscriptions(nc)).get(cmd.name)
    if output in ("json", "yaml") and state is not None:
        _print(webhook_object(state), output)
        return 0
    typer.echo(f"webhook.virtbus.io/{cmd.name} created")
    if generated:
        typer.echo(f"signing secret (shown once, keep it): {value}")
    return 0


async def list_(url: str, *, output: str) -> int:
    async with session(url) as nc:
        subs = sorted((await subscriptions(nc)).values(), key=lambda s: s.name)
    if output in ("json", "yaml"):
        _print(render.as_list(webhook_object(s) for s in subs), output)
        return 0
    if not subs:
        typer.echo("No webhooks found.", err=True)
        return 0
    rows = [(s.name, s.url, ",".join(s.types), s.vm_pattern,
             f"Disabled: {s.disabled_reason}" if s.disabled_reason else "Active",
             render.age(s.created)) for s in subs]  # fmt: skip
    typer.echo(render.table(("NAME", "URL", "TYPES", "VM", "STATUS", "AGE"), rows).rstrip())
    return 0


async def remove(url: str, cmd: c.RemoveWebhook) -> int:
    async with session(url) as nc:
        await send(nc, cmd)
    typer.echo(f'webhook.virtbus.io "{cmd.name}" deleted')
    return 0


async def _ask(nc: Client, subject: str, body: msgspec.Struct, *, wait_s: float) -> Reply:
    try:
        msg = await nc.request(subject, msgspec.json.encode(body), timeout=wait_s)
    except NoRespondersError:
        raise BusUnavailable("no webhook dispatcher is answering on the bus") from None
    except (NatsTimeout, TimeoutError):
        raise BusUnavailable(
            f"the webhook dispatcher did not answer within {wait_s:.0f}s"
        ) from None
    reply = _REPLY.decode(msg.data)
    if reply.error:
        raise Rejected(reply.error, field="name")
    return reply


async def deliveries(url: str, *, name: str, status: str | None, limit: int, output: str) -> int:
    async with session(url) as nc:
        if name not in await subscriptions(nc):
            raise Rejected(f'webhook "{name}" not found', field="name")
        q = DeliveriesQuery(name=name, status=status, limit=limit)
        reply = await _ask(nc, DELIVERIES_SUBJECT, q, wait_s=10)
    if output in ("json", "yaml"):
        _print(render.as_list(delivery_object(d) for d in reply.items), output)
        return 0
    rows = [(str(d.seq), d.type, d.subject, d.status, str(d.attempts), str(d.code or ""),
             d.error[:60], render.age(datetime.fromtimestamp(d.last_at, UTC)))
            for d in reply.items]  # fmt: skip
    header = ("DELIVERY", "TYPE", "SUBJECT", "STATUS", "ATTEMPTS", "CODE", "LAST ERROR", "AGE")
    typer.echo(render.table(header, rows).rstrip() if rows else "No deliveries found.")
    return 0


async def redeliver(url: str, *, name: str, seq: int | None, output: str) -> int:
    async with session(url) as nc:
        reply = await _ask(nc, REDELIVER_SUBJECT, RedeliverRequest(name=name, seq=seq), wait_s=120)
    if output in ("json", "yaml"):
        _print(render.as_list(delivery_object(d) for d in reply.items), output)
    else:
        for d in reply.items:
            code = f" (HTTP {d.code})" if d.code else f" ({d.error})" if d.error else ""
            typer.echo(f"delivery {d.seq}: {d.status}{code}")
        if not reply.items:
            typer.echo("nothing to redeliver")
    return 0 if all(d.status == "Delivered" for d in reply.items) else 1


async def rotate_secret(url: str, *, name: str, secret: str | None, grace_s: float) -> int:
    value = secret or secrets.generate()
    secrets.check_secret(value)
    async with session(url) as nc:
        s = (await subscriptions(nc)).get(name)
        if s is None:
            raise ValidationError(f'webhook "{name}" not found', field="name")
        await secrets.rotate(nc.jetstream(), s.secret_ref, value, grace_s=grace_s)
    typer.echo(f"webhook.virtbus.io/{name} secret rotated; the old one signs for {grace_s:g}s more")
    if secret is None:
        typer.echo(f"signing secret (shown once, keep it): {value}")
    return 0
