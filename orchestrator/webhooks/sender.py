"""One delivery attempt: the exact stored bytes POSTed as a structured-mode CloudEvent, signed.

The body is the message as it sits in VIRT_EVENTS (the envelope is already CloudEvents 1.0 JSON),
so what is signed, sent and stored are the same bytes. Headers follow Standard Webhooks:
`webhook-id` (the event id and the subscription: stable across retries and redeliveries),
`webhook-timestamp` (this attempt), `webhook-signature` (one `v1,` entry per live secret).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import msgspec

from bus.webhook_secrets import Signer
from orchestrator.webhooks.connection import HttpError
from orchestrator.webhooks.http1 import Endpoint

CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"


class Head(msgspec.Struct, frozen=True):
    """The envelope attributes the dispatcher needs, decoded without the event body."""

    id: str
    type: str
    subject: str


HEAD: Final = msgspec.json.Decoder(Head)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    code: int = 0
    error: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def gone(self) -> bool:
        return self.code == 410


def webhook_id(event_id: str, subscription: str) -> str:
    return f"{event_id}-{subscription}"


def signed(*, msg_id: str, body: bytes, signer: Signer) -> list[tuple[str, str]]:
    """The Standard Webhooks headers of one attempt (the content type is the endpoint's)."""
    ts = int(time.time())
    return [
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(ts)),
        ("webhook-signature", signer.sign(msg_id=msg_id, timestamp=ts, body=body)),
    ]


def headers_for(*, msg_id: str, body: bytes, keys: list[bytes]) -> dict[str, str]:
    hdrs = signed(msg_id=msg_id, body=body, signer=Signer(keys))
    return {"content-type": CONTENT_TYPE, **dict(hdrs)}


def retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def post(
    endpoint: Endpoint, *, body: bytes, msg_id: str, signer: Signer, timeout_s: float
) -> Attempt:
    """POST once; every outcome is an Attempt (redirects are failures: they are not followed,
    so an endpoint cannot bounce deliveries to an address the policy refuses)."""
    if not signer:
        return Attempt(error="no signing secret is stored for this subscription")
    try:
        resp = await endpoint.post(body, signed(msg_id=msg_id, body=body, signer=signer))
    except TimeoutError:
        return Attempt(error=f"timed out after {timeout_s:g}s")
    except (HttpError, OSError) as err:
        return Attempt(error=f"{type(err).__name__}: {err}")
    error = "" if resp.status < 300 else f"HTTP {resp.status}"
    return Attempt(code=resp.status, retry_after=retry_after(resp.headers.get("retry-after")),
                   error=error)  # fmt: skip
