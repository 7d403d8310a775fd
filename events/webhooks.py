"""Webhooks in the contract: a subscription as the fold of its `webhook` aggregate, and the wire
types of the dispatcher's two questions (`webhook deliveries`, `webhook redeliver`).

Here, not in the dispatcher's package, because three processes read them: the intake judges
against the fold, the dispatcher runs what it says and answers the questions, and the CLI shows
both. Pure, like the rest of `events/`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final

import msgspec

from events import model as m
from events.envelope import Recorded

DELIVERIES_SUBJECT: Final = "virt.webhooks.deliveries"
REDELIVER_SUBJECT: Final = "virt.webhooks.redeliver"

DELIVERED: Final = "Delivered"
RETRYING: Final = "Retrying"
DEAD: Final = "DeadLetter"  # every attempt failed; `webhook redeliver` can try again
GONE: Final = "Gone"  # the endpoint answered 410: the subscription was disabled
FINAL: Final = frozenset({DELIVERED, DEAD, GONE})


class WebhookState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int = 0
    exists: bool = False
    url: str = ""
    types: list[str] = []
    vm_pattern: str = "*"
    from_seq: int = 0
    since: datetime | None = None
    secret_ref: str = ""
    disabled_reason: str = ""
    life_seq: int = 0  # stream sequence of this life's WebhookSubscribed
    created: datetime | None = None

    @property
    def active(self) -> bool:
        return self.exists and not self.disabled_reason

    @property
    def consumer(self) -> str:
        """The durable consumer of this life: a name re-created later gets a fresh one."""
        return f"webhook-{self.name}-{self.life_seq}"


def apply_webhook(s: WebhookState, rec: Recorded) -> WebhookState:
    e, env = rec.envelope.data, rec.envelope
    s = msgspec.structs.replace(s, version=env.version)
    if isinstance(e, m.WebhookSubscribed):
        return WebhookState(
            name=s.name, version=env.version, exists=True, url=e.url, types=list(e.types),
            vm_pattern=e.vm_pattern, from_seq=e.from_seq, since=e.since, secret_ref=e.secret_ref,
            life_seq=rec.seq, created=env.time,
        )  # fmt: skip
    if isinstance(e, m.WebhookUnsubscribed):
        return msgspec.structs.replace(s, exists=False, disabled_reason="")
    if isinstance(e, m.WebhookDisabled) and s.exists:
        return msgspec.structs.replace(s, disabled_reason=e.reason or "disabled")
    return s


def fold_webhook(name: str, history: Iterable[Recorded]) -> WebhookState:
    s = WebhookState(name=name)
    for rec in history:
        s = apply_webhook(s, rec)
    return s


# --- the dispatcher's answers --------------------------------------------------------------------


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event's delivery to one subscription, as the dispatcher's records have it."""

    consumer: str
    seq: int  # the event's stream sequence: the delivery's id within its subscription
    name: str
    webhook_id: str
    type: str
    subject: str
    status: str
    attempts: int
    code: int = 0  # the endpoint's last HTTP status, 0 when it never answered
    error: str = ""
    first_at: float = 0.0
    last_at: float = 0.0
    next_at: float = 0.0  # when a Retrying delivery is due again


class DeliveriesQuery(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    status: str | None = None
    limit: int = 100


class RedeliverRequest(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    seq: int | None = None


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Delivery] = []
    error: str = ""
