"""How the orchestrator, the workers and the CLI reach the bus: the URL, credentials and TLS rules.

Every command that touches the bus takes `--server`, else `VIRTBUS_NATS_URL`, else the default; the
embedded stack starts its own nats-server instead. A secured bus (what `virtbus up` runs) refuses
anonymous clients and speaks TLS: a client gives a `.creds` file and the CA that signed the
server's certificate (`--creds`, `--tls-ca`, or `VIRTBUS_CREDS`, `VIRTBUS_TLS_CA`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import nats
from nats.aio.client import Client

from bus.credentials import read_creds
from bus.server import DEFAULT_URL, NatsServer
from events.errors import BusUnavailable, ValidationError

log = logging.getLogger("virtbus.bus")


def server_url(explicit: str | None) -> str:
    return explicit or os.environ.get("VIRTBUS_NATS_URL") or DEFAULT_URL


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the bus's CA (not the system's store)."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        why = f"cannot use {ca_file} as the bus's CA: {err}"
        raise ValidationError(why, field="tls-ca") from err


async def connect(
    url: str, *, name: str = "virtbus", creds: Path | None = None, tls_ca: Path | None = None
) -> Client:
    """A nats-py connection, authenticated with `creds` and verifying the server against `tls_ca`
    when given; failures become one BusUnavailable that says what to do."""
    seen: list[Exception] = []
    secure: dict[str, object] = {}
    if tls_ca is None and (await _server_info(url)).get("tls_required"):
        # nats-py would try the upgrade with the system's CAs and hang on the failed handshake
        raise BusUnavailable(f"cannot reach NATS at {url}: {_NEEDS_TLS}")
    if creds is not None:
        read_creds(creds)  # a missing or damaged file is named, not a refused connection later
        secure["user_credentials"] = str(creds)
    if tls_ca is not None:
        secure["tls"] = tls_context(tls_ca)

    async def quiet(err: Exception) -> None:
        # nats-py prints a traceback per failed attempt by default; our caller reports the outcome,
        # with the last attempt's own reason ("Connect call failed"), not nats-py's summary.
        log.debug("nats: %s", err)
        seen.append(err)

    try:
        # nats-py retries a failed TLS handshake without end: bound the whole attempt
        return await asyncio.wait_for(nats.connect(
            url, name=name, connect_timeout=2, max_reconnect_attempts=3, allow_reconnect=True,
            reconnect_time_wait=0.5, error_cb=quiet, **secure,
        ), _CONNECT_WITHIN)  # fmt: skip
    except Exception as err:  # nats-py raises several unrelated types for "no server there"
        said = [str(e) for e in seen if "Violation" in str(e) or "authentication" in str(e)]
        # the server's own words win over the broken pipe a TLS close leaves behind them
        why = (said or [str(seen[-1] if seen else err)])[-1] or type(err).__name__
        raise BusUnavailable(f"cannot reach NATS at {url}: {why}{_hint(why, secure)}") from err


def _hint(why: str, secure: dict[str, object]) -> str:
    """What to do about a refusal the server gave, in virtbus's words."""
    if "Authorization Violation" in why or "authentication" in why.lower():
        if "user_credentials" not in secure:
            return " (the bus refuses anonymous clients: give --creds FILE or VIRTBUS_CREDS)"
        return " (the server refused these credentials: revoked, expired or not signed by it)"
    if "CERTIFICATE_VERIFY_FAILED" in why:
        return " (the bus's certificate is not signed by the given CA: check --tls-ca)"
    return ""


_CONNECT_WITHIN = 10.0
_NEEDS_TLS = "the bus speaks TLS: give its CA with --tls-ca FILE or VIRTBUS_TLS_CA"


async def _server_info(url: str, *, within: float = 2) -> dict[str, object]:
    """The INFO a NATS server greets every client with (before any TLS), or {} if none comes."""
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or 4222), within
        )
    except (OSError, TimeoutError):
        return {}  # nats-py's own attempt says why, in its words
    try:
        line = await asyncio.wait_for(reader.readline(), within)
    except (OSError, TimeoutError):
        return {}
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not line.startswith(b"INFO "):
        return {}
    try:
        info = json.loads(line[5:])
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


@contextlib.asynccontextmanager
async def bus_for_bench(explicit: str | None, *, sync_always: bool = False) -> AsyncIterator[str]:
    """A given server, or a throw-away embedded one so a benchmark never touches real data."""
    if explicit:
        yield explicit
        return
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-") as tmp:
        async with NatsServer(data_dir=Path(tmp), port=-1, sync_always=sync_always) as server:
            yield server.url
