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

import aiohttp
import msgspec

from orchestrator.webhooks.secrets import sign

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


def headers_for(*, msg_id: str, body: bytes, keys: list[bytes]) -> dict[str, str]:
    ts = int(time.time())
    return {
        "content-type": CONTENT_TYPE,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(keys, msg_id=msg_id, timestamp=ts, body=body),
    }


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
    session: aiohttp.ClientSession, url: str, *, body: bytes, msg_id: str, keys: list[bytes],
    timeout_s: float,
) -> Attempt:  # fmt: skip
    """POST once; every outcome is an Attempt (redirects are failures: they are not followed,
    so an endpoint cannot bounce deliveries to an address the policy refuses)."""
    if not keys:
        return Attempt(error="no signing secret is stored for this subscription")
    hdrs = headers_for(msg_id=msg_id, body=body, keys=keys)
    try:
        # The session carries the timeout (`timeout_s`): one object, not one per request.
        async with session.post(url, data=body, headers=hdrs, allow_redirects=False) as resp:
            await resp.read()
            after = retry_after(resp.headers.get("Retry-After"))
            error = "" if resp.status < 300 else f"HTTP {resp.status}"
            return Attempt(code=resp.status, retry_after=after, error=error)
    except TimeoutError:
        return Attempt(error=f"timed out after {timeout_s:g}s")
    except (aiohttp.ClientError, OSError) as err:
        return Attempt(error=f"{type(err).__name__}: {err}")
