"""How the lean connections (the replay reader, the append requester) log in: as the nats-py
connection beside them did, so a secured bus keeps their speed.

They copy nats-py's login from its options: a user and password or a token, or a `.creds` file
whose seed signs the nonce the server greets with, and TLS with the same context when the server
requires it. A login they cannot copy (an nkey seed alone, callables, an in-memory `.creds`)
raises `LeanUnavailable` before anything is sent, and the caller uses nats-py instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult

from nats.aio.client import Client

from bus.credentials import read_creds, sign_nonce
from events.errors import ValidationError

HANDSHAKE_S = 5.0


class LeanUnavailable(Exception):
    """This connection cannot be made the lean way: use nats-py instead."""


@dataclass(frozen=True)
class Login:
    """Where a lean connection goes and how it proves who it is there."""

    host: str
    port: int
    fields: dict[str, str]  # CONNECT's user/pass/auth_token, when the URL or options had them
    creds: Path | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    inbox: bytes = b"_INBOX"  # replies come under it: a user may subscribe under its own only


def login_of(nc: Client) -> Login | None:
    """The login of nats-py's connection `nc`, for a lean connection of its own, or None when it
    cannot be copied."""
    # nats-py keeps its nkey and .creds settings out of `options`, in members of its own
    keys = ("user_credentials", "nkeys_seed", "nkeys_seed_str", "signature_cb", "user_jwt_cb")
    login = login_from(nc.connected_url, {
        **nc.options, **{k: getattr(nc, f"_{k}", None) for k in keys},
    })  # fmt: skip
    inbox = bytes(getattr(nc, "_inbox_prefix", b"_INBOX"))
    return None if login is None else dataclasses.replace(login, inbox=inbox)


def login_from(url: ParseResult | None, options: dict[str, Any]) -> Login | None:
    """The login nats-py makes at `url` with `options`, or None when a lean one cannot copy it."""
    if url is None or url.scheme not in ("nats", "tls"):
        return None
    creds = options.get("user_credentials")
    if creds is not None and not isinstance(creds, str):
        return None  # a (jwt, seed) pair or a callable: nats-py's alone
    # (nats-py derives its signing callbacks from a .creds file: only callbacks of its own count)
    own = ("nkeys_seed", "nkeys_seed_str") + (() if creds else ("signature_cb", "user_jwt_cb"))
    if any(options.get(k) for k in own):
        return None
    tls = options.get("tls")
    fields = _fields(url.username, url.password, options)
    if fields is None or (tls is not None and not isinstance(tls, ssl.SSLContext)):
        return None
    return Login(
        url.hostname or "127.0.0.1", url.port or 4222, fields,
        creds=Path(creds) if creds else None, tls=tls, tls_hostname=options.get("tls_hostname"),
    )  # fmt: skip


def _fields(
    user: str | None, password: str | None, options: dict[str, Any]
) -> dict[str, str] | None:
    user, password = user or options.get("user"), password or options.get("password")
    token = options.get("token")
    if user and not password and not token:  # nats://TOKEN@host puts the token in the user
        return {"auth_token": user} if isinstance(user, str) else None
    out: dict[str, str] = {}
    for key, value in (("user", user), ("pass", password), ("auth_token", token)):
        if value is None:
            continue
        if not isinstance(value, str):
            return None
        out[key] = value
    return out


async def open_lean(
    login: Login, *, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection logged in as `login` says and answered a PING: ready for SUB and PUB."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(login.host, login.port, limit=limit), HANDSHAKE_S
        )
    except (OSError, TimeoutError) as err:
        raise LeanUnavailable(f"cannot connect: {err}") from err
    try:
        await _handshake(reader, writer, login)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login: Login
) -> None:
    """INFO, TLS if the server wants it, CONNECT and a PING answered, or LeanUnavailable."""
    try:
        line = await asyncio.wait_for(reader.readline(), HANDSHAKE_S)
    except (OSError, TimeoutError) as err:
        raise LeanUnavailable(f"no INFO from the server: {err}") from err
    if not line.startswith(b"INFO "):
        raise LeanUnavailable(f"unexpected greeting {line[:40]!r}")
    info = json.loads(line[5:])
    if not info.get("headers"):
        raise LeanUnavailable("the server cannot send headers")
    if bool(info.get("tls_required")) != (login.tls is not None):
        raise LeanUnavailable("the server's TLS and nats-py's differ")
    if login.tls is not None:
        try:
            await asyncio.wait_for(
                writer.start_tls(login.tls, server_hostname=login.tls_hostname or login.host),
                HANDSHAKE_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as err:
            raise LeanUnavailable(f"TLS handshake failed: {err}") from err
    connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
               "protocol": 1, "lang": "python-virtbus-lean", "version": "1",
               **login.fields, **_proof(login, info)}  # fmt: skip
    writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), HANDSHAKE_S)
        except (OSError, TimeoutError) as err:
            raise LeanUnavailable(f"no answer to CONNECT: {err}") from err
        if line.startswith(b"PONG"):
            return
        if line.startswith(b"-ERR") or not line:
            raise LeanUnavailable(f"CONNECT refused: {line.strip()[:200]!r}")


def _proof(login: Login, info: dict[str, Any]) -> dict[str, str]:
    """The user JWT and the nonce signed with its seed, when the server asked for them."""
    nonce = info.get("nonce")
    if login.creds is None or not isinstance(nonce, str):
        return {}
    try:
        jwt, seed = read_creds(login.creds)
    except ValidationError as err:
        raise LeanUnavailable(err.message) from err
    return {"jwt": jwt, "sig": sign_nonce(seed, nonce)}
