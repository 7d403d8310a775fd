"""Webhook settings and the endpoint check, shared by the intake (on add) and the dispatcher.

An endpoint URL is checked twice: when the subscription is judged (every address the host
resolves to) and again on every connection (`http1.Endpoint` never dials a refused address), so a
DNS answer that changes after the check cannot point deliveries into the private network. Which
addresses are refused is `addresses.address_refusal`: everything not globally routable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from events.errors import ValidationError
from orchestrator.webhooks.addresses import ALLOW_NETS_ENV, Addr, Net, address_refusal

__all__ = ["ALLOW_NETS_ENV", "Addr", "Net", "WebhookSettings", "address_refusal", "check_endpoint"]

# Standard Webhooks' schedule: the first attempt at once, then these waits (8 attempts in all).
SCHEDULE_S: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
JITTER: Final = 0.1  # each wait is drawn from +-10 % of its nominal value
MAX_RETRY_AFTER_S: Final = 36000.0
SCALE_ENV: Final = "VIRTBUS_WEBHOOK_RETRY_SCALE"


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Knobs of the dispatcher; `from_env` reads the `VIRTBUS_WEBHOOK_*` variables."""

    allow_nets: tuple[str, ...] = ()
    retry_scale: float = 1.0  # tests shrink the whole schedule with this, never by mocking
    timeout_s: float = 10.0  # one POST, connect to last byte
    concurrency: int = 16  # POSTs in flight per subscriber
    ack_wait_s: float = 30.0  # JetStream redelivers a message held this long without a sign
    max_ack_pending: int = 1000  # per subscriber: how far a slow endpoint may fall behind

    @classmethod
    def from_env(cls, **overrides: Any) -> WebhookSettings:
        env = os.environ
        nets = tuple(n.strip() for n in env.get(ALLOW_NETS_ENV, "").split(",") if n.strip())
        values: dict[str, Any] = {"allow_nets": nets}
        if scale := env.get(SCALE_ENV):
            values["retry_scale"] = float(scale)
        for name, conv in (("timeout_s", float), ("concurrency", int), ("ack_wait_s", float)):
            if raw := env.get(f"VIRTBUS_WEBHOOK_{name.upper()}"):
                values[name] = conv(raw)
        values.update(overrides)
        return cls(**values)

    @property
    def attempts(self) -> int:
        return len(SCHEDULE_S) + 1

    def retry_delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), jittered; a
        `Retry-After` from the endpoint is honoured as a lower bound."""
        nominal = SCHEDULE_S[min(attempt, len(SCHEDULE_S)) - 1] * self.retry_scale
        delay = nominal * random.uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    def networks(self) -> list[Net]:
        return parse_nets(self.allow_nets)


def parse_nets(values: Sequence[str]) -> list[Net]:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValidationError(
                f"{ALLOW_NETS_ENV}: {v!r} is not a CIDR network", field=ALLOW_NETS_ENV
            ) from None
    return nets


def check_url(url: str) -> tuple[str, int, str | None]:
    """Syntax of an endpoint URL: (host, port, literal IP or None); raise naming `url`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ValidationError(f"url: {url!r} is not a valid URL: {err}", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError(f"url: {url!r} must be http:// or https://", field="url")
    if not parts.hostname:
        raise ValidationError(f"url: {url!r} has no host", field="url")
    if parts.username or parts.password:
        raise ValidationError("url: credentials in the URL are refused (they would be logged); "
                              "use the signing secret", field="url")  # fmt: skip
    if parts.fragment:
        raise ValidationError(f"url: {url!r} has a fragment", field="url")
    host = parts.hostname
    try:
        literal: str | None = str(ipaddress.ip_address(host))
    except ValueError:
        literal = None
    return host, port or (443 if parts.scheme == "https" else 80), literal


async def check_endpoint(url: str, settings: WebhookSettings) -> None:
    """Refuse a URL whose host is, or resolves to, an address the policy forbids."""
    host, port, literal = check_url(url)
    allowed = settings.networks()
    if literal is not None:
        addrs = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as err:
            raise ValidationError(f"url: host {host!r} does not resolve: {err}",
                                  field="url") from None  # fmt: skip
        except UnicodeError as err:  # an empty or too long label: the IDNA codec says so
            raise ValidationError(f"url: {host!r} is not a host name: {err}", field="url") from None
        addrs = sorted({str(info[4][0]) for info in infos})
    for a in addrs:
        if (why := address_refusal(ipaddress.ip_address(a), allowed)) is not None:
            raise ValidationError(f"url: {host} refused: {why}", field="url")
