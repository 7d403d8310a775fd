"""How the orchestrator, the workers and the CLI reach the bus: the URL, credentials and TLS rules.

Every command that touches the bus takes `--server`, else `VIRTBUS_NATS_URL`, else the default; the
embedded stack starts its own nats-server instead. A secured bus (what `virtbus up` runs) refuses
anonymous clients and speaks TLS: a client gives a `.creds` file and the CA that signed the
server's certificate (`--creds`, `--tls-ca`, or `VIRTBUS_CREDS`, `VIRTBUS_TLS_CA`). On a bus that
asks for client certificates (`--mtls`), a certificate alone logs in as the user it names: the
client presents the stack's sentinel credentials with it (`orchestrator/certlogin.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import nats
from nats.aio.client import Client

from bus.cluster import NatsCluster
from bus.credentials import SENTINEL, SENTINEL_TAG, claims_of, read_creds
from bus.server import DEFAULT_URL, NatsServer
from events.errors import BusUnavailable, ValidationError
from events.names import check_name

if TYPE_CHECKING:
    from bus.trust import Trust

log = logging.getLogger("virtbus.bus")


# `virtbus up --data-dir .virtbus` (`make run`) writes its servers' URLs here while it runs
LOCAL_URL_FILE = Path(".virtbus") / "bus.url"


def server_url(explicit: str | None) -> str:
    """`--server`, else $VIRTBUS_NATS_URL, else the servers of the stack `make run` keeps in
    ./.virtbus (all of a cluster's), else the default."""
    return explicit or os.environ.get("VIRTBUS_NATS_URL") or _local_url() or DEFAULT_URL


def _local_url() -> str:
    try:
        return LOCAL_URL_FILE.read_text().strip()
    except OSError:
        return ""


def servers(url: str) -> list[str]:
    """The servers a URL names: one, or a cluster's as a comma-separated list (as the `nats`
    CLI takes them); a client is given them all and rides out the loss of one."""
    return [u.strip() for u in url.split(",") if u.strip()]


@dataclass(frozen=True)
class Access:
    """Who this process is on the bus and whom it trusts: a `.creds` file and the bus's CA, and a
    client certificate and its key where the bus asks for one (mutual TLS, `virtbus up --mtls`).

    `adaptive` access was found rather than given (the local stack's files): it is used only where
    the server asks for it, so a CLI run beside a `make run` still reaches an open test bus. Given
    access is held to: a CA given for a server that does not speak TLS is an error, not a
    plain-text connection an attacker in the middle could have arranged.
    """

    creds: Path | None = None
    tls_ca: Path | None = None
    adaptive: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    sentinel: Path | None = None  # no `creds`: log in by `tls_cert` with these (`--mtls`)

    @classmethod
    def from_env(cls) -> Access:
        def path(var: str) -> Path | None:
            return Path(value) if (value := os.environ.get(var)) else None

        return cls(path("VIRTBUS_CREDS"), path("VIRTBUS_TLS_CA"),
                   tls_cert=path("VIRTBUS_TLS_CERT"), tls_key=path("VIRTBUS_TLS_KEY"))  # fmt: skip

    @classmethod
    def local(cls, data_dir: Path) -> Access | None:
        """The admin's access to the stack `virtbus up --data-dir data_dir` runs, if it made one."""
        creds, ca = data_dir / "creds" / "admin.creds", data_dir / "tls" / "ca.pem"
        if not creds.is_file() or not ca.is_file():
            return None
        cert, key = (
            data_dir / "tls" / "clients" / "admin.pem",
            data_dir / "tls" / "clients" / "admin-key.pem",
        )
        mutual = cert.is_file() and key.is_file()
        return cls(creds.absolute(), ca.absolute(), adaptive=True,
                   tls_cert=cert.absolute() if mutual else None,
                   tls_key=key.absolute() if mutual else None)  # fmt: skip

    def by_certificate(self, data_dir: Path) -> Access:
        """This access, where it gives a client certificate and no credentials, with what a login
        by certificate also needs: the sentinel credentials (beside the certificate, as `auth
        add-user --client-cert` writes them, else those of the stack in `data_dir`) and, if no CA
        was given, the stack's."""
        if self.tls_cert is None or self.creds is not None:
            return self
        name = f"{SENTINEL}.creds"
        found = [p for p in (self.tls_cert.parent / name, data_dir / "creds" / name) if p.is_file()]
        ca = data_dir / "tls" / "ca.pem"
        return replace(self, sentinel=found[0].absolute() if found else self.sentinel,
                       tls_ca=self.tls_ca or (ca.absolute() if ca.is_file() else None))  # fmt: skip

    def __bool__(self) -> bool:
        return any(p is not None for p in (self.creds, self.tls_ca, self.tls_cert, self.tls_key))


_PROCESS: dict[str, Access] = {}  # "access": set once by `use`


def use(access: Access) -> None:
    """This process's access wherever `connect` is not told otherwise (the CLI's `--creds`)."""
    _PROCESS["access"] = access


def configured() -> Access:
    return _PROCESS.get("access") or Access.from_env()


class _TlsEofNoise(logging.Filter):
    """asyncio warns at every TLS stream the server closes (its stream protocol asks to stay
    half-open, which TLS cannot): harmless, and printed to every CLI user's terminal otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


_TLS_EOF_NOISE = _TlsEofNoise()


def tls_context(
    ca_file: Path, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context that trusts exactly the bus's CA (not the system's store), showing the
    client certificate `cert` (its key in `key`) where given."""
    logging.getLogger("asyncio").addFilter(_TLS_EOF_NOISE)  # once: a filter is added at most once
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as err:  # (an OSError too: first)
        why = f"{ca_file} holds no PEM certificate ({err.reason or err})"
        raise ValidationError(why, field="tls-ca") from err
    except OSError as err:
        why = f"cannot read {ca_file}: {err.strerror or err}"
        raise ValidationError(why, field="tls-ca") from err
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as err:
            why = f"cannot use {cert} (key {key}) as a client certificate: {_reason(err)}"
            raise ValidationError(why, field="tls-cert") from err
    return context


def _reason(err: OSError | ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err)
    return str(err.strerror or err)


async def connect(
    url: str, *, name: str = "virtbus", creds: Path | None = None, tls_ca: Path | None = None,
    access: Access | None = None, lasting: bool = False,
) -> Client:  # fmt: skip
    """A nats-py connection, authenticated with `creds` and verifying the server against `tls_ca`
    (or as `access` says, else as this process's access); failures become one BusUnavailable that
    says what to do.

    `lasting`: a long-lived component's connection, which rides out a server restart with
    nats-py's patient reconnects; a CLI's gives up after a few seconds."""
    if access is None:
        access = Access(creds, tls_ca) if creds or tls_ca else configured()
    secure, name_on_bus = await _secure_options(url, access)
    if name_on_bus is not None:
        # replies come to an inbox only this identity may subscribe to (its permissions say so)
        secure["inbox_prefix"] = f"_INBOX_{name_on_bus}"
    seen: deque[Exception] = deque(maxlen=8)  # a lasting connection reports here for life

    async def quiet(err: Exception) -> None:
        # nats-py prints a traceback per failed attempt by default; our caller reports the outcome,
        # with the last attempt's own reason ("Connect call failed"), not nats-py's summary.
        log.debug("nats: %s", err)
        seen.append(err)

    # A lasting connection pings often enough to find its server paused or cut off (not closed:
    # no EOF comes) within seconds, and moves to another of a cluster's servers; nats-py's
    # default (a ping every 2 minutes, 2 unanswered) left an append stuck for minutes.
    patience: dict[str, object] = (
        {"ping_interval": PING_S, "max_outstanding_pings": 2}
        if lasting
        else {"connect_timeout": 2, "max_reconnect_attempts": 3, "reconnect_time_wait": 0.5}
    )
    try:
        # nats-py retries a failed TLS handshake without end: bound the whole attempt
        nc = await asyncio.wait_for(
            nats.connect(servers(url), name=name, error_cb=quiet, **patience, **secure),
            _CONNECT_WITHIN,
        )
    except Exception as err:  # nats-py raises several unrelated types for "no server there"
        said = [str(e) for e in seen if "Violation" in str(e) or "authentication" in str(e)]
        # the server's own words win over the broken pipe a TLS close leaves behind them
        why = (said or [str(seen[-1] if seen else err)])[-1] or type(err).__name__
        hint = _hint(why, secure, by_certificate=access.creds is None and bool(access.tls_cert))
        raise BusUnavailable(f"cannot reach NATS at {url}: {why}{hint}") from err
    if name_on_bus is not None:
        _IDENTITIES[nc] = name_on_bus
        if access.creds is None and access.tls_cert is not None:
            _CERTIFIED.add(nc)
    return nc


_IDENTITIES: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()
_CERTIFIED: weakref.WeakSet[Client] = weakref.WeakSet()


def by_certificate(nc: Client) -> bool:
    """`nc` logged in by client certificate: the server holds its JWT, not the client, so how it
    reads is learnt from the log (`bus.client.login`)."""
    return nc in _CERTIFIED


def identity(nc: Client) -> str | None:
    """The name the server authenticated `nc` as (its user JWT's), or None on an open bus.

    Subjects that pin an identity (`virt.api.<op>.<name>`, a command's last token) use it: the
    server lets a user publish only under its own name, so that name is who asked."""
    return _IDENTITIES.get(nc)


def _identity(jwt: str, cert: Path | None) -> str | None:
    """The name a user JWT carries (the sentinel's: the one `cert` names), where a subject token
    can carry it."""
    claims = claims_of(jwt)
    name = claims.get("name")
    if SENTINEL_TAG in (claims.get("nats") or {}).get("tags", []):
        from bus.pki import certified_name  # cryptography: a tenth of a second every CLI start

        name = certified_name(cert.read_bytes()) if cert is not None else None
    try:
        return check_name(name, field="creds") if isinstance(name, str) else None
    except ValidationError:
        return None  # a name no subject can carry: it logs in, and pins nothing


async def _secure_options(url: str, access: Access) -> tuple[dict[str, object], str | None]:
    """nats-py's options for `access` against the server at `url`, as its greeting asks, and the
    name the server will know the connection by (its JWT's; None when it presents none)."""
    info: dict[str, object] = {}
    for one in servers(url):  # the first that greets (a cluster's servers greet alike)
        if info := await _server_info(one):
            break
    secure: dict[str, object] = {}
    if access.tls_ca is not None and (info.get("tls_required") or not access.adaptive):
        if info and not info.get("tls_required"):
            why = f"--tls-ca was given, but the bus at {url} does not speak TLS"
            raise BusUnavailable(f"cannot reach NATS at {url}: {why}")
        if info.get("tls_verify") and access.tls_cert is None:
            raise BusUnavailable(f"cannot reach NATS at {url}: {_NEEDS_CERT}")
        secure["tls"] = tls_context(access.tls_ca, cert=access.tls_cert, key=access.tls_key)
    elif info.get("tls_required"):
        # nats-py would try the upgrade with the system's CAs and hang on the failed handshake
        raise BusUnavailable(f"cannot reach NATS at {url}: {_NEEDS_TLS}")
    creds = access.creds or (access.sentinel if access.tls_cert is not None else None)
    if creds is not None and (info.get("auth_required") or not access.adaptive):
        jwt, _ = read_creds(creds)  # a missing or damaged file is named now, not later
        if info.get("auth_required"):  # an open bus signs no nonce: nothing to present
            secure["user_credentials"] = str(creds)
            return secure, _identity(jwt, access.tls_cert)
    return secure, None


def _hint(why: str, secure: dict[str, object], *, by_certificate: bool) -> str:
    """What to do about a refusal the server gave, in virtbus's words."""
    if "Authorization Violation" in why or "authentication" in why.lower():
        if "user_credentials" not in secure and by_certificate:
            return f" (a login by certificate presents the stack's {SENTINEL}.creds: none found)"
        if "user_credentials" not in secure:
            return " (the bus refuses anonymous clients: give --creds FILE or VIRTBUS_CREDS)"
        if by_certificate:
            return (" (the bus refused this certificate's login: its user is unknown or revoked,"
                    " the orchestrator's log says which)")  # fmt: skip
        return " (the server refused these credentials: revoked, expired or not signed by it)"
    if "CERTIFICATE_VERIFY_FAILED" in why:
        return " (the bus's certificate is not signed by the given CA: check --tls-ca)"
    return ""


_CONNECT_WITHIN = 10.0
PING_S = 3.0  # a lasting connection's ping interval: a silent server is left within ~3 of them
_NEEDS_TLS = "the bus speaks TLS: give its CA with --tls-ca FILE or VIRTBUS_TLS_CA"
_NEEDS_CERT = (
    "the bus asks every client for a certificate its CA signed (mutual TLS): give --tls-cert FILE "
    "and --tls-key FILE, or VIRTBUS_TLS_CERT and VIRTBUS_TLS_KEY"
)


async def greeting(url: str) -> dict[str, object]:
    """The INFO the server at `url` greets with (its name, version, cluster...), or {} if it is
    not there: `virtbus admin status` asks each server it was given."""
    return await _server_info(url)


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
async def bus_for_bench(
    explicit: str | None, *, sync_always: bool = False, trust: Trust | None = None,
    cluster: int = 0,
) -> AsyncIterator[str]:  # fmt: skip
    """A given server, or a throw-away embedded one so a benchmark never touches real data (one
    that trusts only `trust`'s identities, over TLS, when given: `bench/rig.py`'s secure bus;
    `cluster` of them as one JetStream cluster, their URLs comma-separated)."""
    if explicit:
        yield explicit
        return
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-") as tmp:
        if cluster:
            async with NatsCluster(data_dir=Path(tmp), size=cluster, sync_always=sync_always,
                                   trust=trust) as group:  # fmt: skip
                yield ",".join(group.urls)
            return
        async with NatsServer(
            data_dir=Path(tmp), port=-1, sync_always=sync_always, trust=trust
        ) as server:
            yield server.url
