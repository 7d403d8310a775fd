"""NATS identities: nkeys, the JWTs that bind them (operator, account, user), and `.creds` files.

virtbus's bus uses NATS decentralized auth: an operator signs accounts, an account signs users, and
the server trusts the operator alone, so a user is added or revoked by publishing a new claim, never
by restarting the server. The keys are Ed25519 nkeys (the `nkeys` package does the cryptography);
this module only lays out the claims the way NATS ADR-14 specifies them and signs them with those
keys. A `.creds` file is what the `nats` CLI and every NATS client read: a user JWT and its seed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nkeys  # type: ignore[import-untyped]

from events.errors import ValidationError

# The certificate login's stand-in user: a client presents its creds, and its name comes from the
# certificate it also presents (`orchestrator/certlogin.py`); the tag is how a JWT says it is one.
SENTINEL: Final = "sentinel"
SENTINEL_TAG: Final = "virtbus-cert-login"

UNLIMITED: Final[dict[str, Any]] = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
    "conn": -1, "leaf": -1,
}  # fmt: skip
# An account without JetStream limits has JetStream off: -1 is "no limit".
JETSTREAM: Final[dict[str, Any]] = {
    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
}  # fmt: skip
_CREDS = re.compile(
    r"-----BEGIN NATS USER JWT-----\s*(?P<jwt>\S+)\s*------END NATS USER JWT------.*?"
    r"-----BEGIN USER NKEY SEED-----\s*(?P<seed>\S+)\s*------END USER NKEY SEED------",
    re.DOTALL,
)


@dataclass(frozen=True)
class KeyPair:
    """An nkey: its seed (the secret) and its public key (what claims name)."""

    seed: bytes = field(repr=False)  # never in a log line or a traceback

    @classmethod
    def new(cls, kind: str) -> KeyPair:
        prefix = {
            "operator": nkeys.PREFIX_BYTE_OPERATOR,
            "account": nkeys.PREFIX_BYTE_ACCOUNT,
            "user": nkeys.PREFIX_BYTE_USER,
        }[kind]
        return cls(nkeys.encode_seed(os.urandom(32), prefix))

    @property
    def public(self) -> str:
        return str(nkeys.from_seed(self.seed).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(self.seed).sign(data))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], *, signer: KeyPair, issued: int | None = None) -> str:
    """A signed NATS JWT: `iat` stamped, `jti` the hash of the claims, Ed25519 over both parts."""
    body = {**claims, "iat": int(time.time()) if issued is None else issued, "jti": ""}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{header}.{payload}.{_b64(signer.sign(f'{header}.{payload}'.encode()))}"


def claims_of(jwt: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the server verifies; this is for listing)."""
    try:
        payload = jwt.split(".")[1]
        decoded = json.loads(_unb64(payload))
    except (IndexError, ValueError) as err:
        raise ValidationError(f"not a NATS JWT: {err}", field="jwt") from err
    if not isinstance(decoded, dict):
        raise ValidationError("not a NATS JWT: its claims are not an object", field="jwt")
    return decoded


def operator_jwt(operator: KeyPair, *, system_account: str, name: str = "virtbus") -> str:
    nats = {"type": "operator", "version": 2, "system_account": system_account}
    return encode({"iss": operator.public, "sub": operator.public, "name": name, "nats": nats},
                  signer=operator)  # fmt: skip


def account_jwt(
    operator: KeyPair,
    account: str,
    *,
    name: str,
    jetstream: bool = True,
    revocations: dict[str, int] | None = None,
    issued: int | None = None,
    callout: tuple[str, str] | None = None,
) -> str:
    """An account's claim; `revocations` maps user public keys to the time before which their
    JWTs are no longer honoured (the server drops their connections when it gets the claim).

    `callout` (the service user's key, the account its answers place users in): the server asks
    that service who each of this account's users is (auth callout, NATS ADR-26)."""
    nats: dict[str, Any] = {
        "type": "account", "version": 2,
        "limits": {**UNLIMITED, **(JETSTREAM if jetstream else {})},
    }  # fmt: skip
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    if callout is not None:
        service, placed_in = callout
        nats["authorization"] = {"auth_users": [service], "allowed_accounts": [placed_in]}
    return encode({"iss": operator.public, "sub": account, "name": name, "nats": nats},
                  signer=operator, issued=issued)  # fmt: skip


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish and subscribe to (NATS allow lists; empty means none), and
    those it may not publish to whatever the allow list says (`deny_publish`)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    nothing: bool = False  # deny every subject (an empty allow list would allow them all)
    deny_publish: tuple[str, ...] = ()


def user_jwt(
    account: KeyPair,
    user: str,
    *,
    name: str,
    permissions: Permissions | None = None,
    tags: tuple[str, ...] = (),
    expires: int | None = None,
) -> str:
    """A user's claim signed by its account; no `permissions` means every subject (an admin)."""
    nats: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
    if permissions is not None:
        nats["pub"] = {"allow": list(permissions.publish)}
        if permissions.deny_publish:
            nats["pub"]["deny"] = list(permissions.deny_publish)
        nats["sub"] = {"allow": list(permissions.subscribe)}
        if permissions.allow_responses:
            nats["resp"] = {"max": -1, "ttl": 0}
        if permissions.nothing:
            nats["pub"] = nats["sub"] = {"deny": [">"]}
    if tags:
        nats["tags"] = list(tags)
    claims: dict[str, Any] = {"iss": account.public, "sub": user, "name": name, "nats": nats}
    if expires is not None:
        claims["exp"] = expires
    return encode(claims, signer=account)


def reissued(account: KeyPair, recorded: str, *, user: str, expires: int) -> str:
    """The user of JWT `recorded` (its name and permissions) again, for key `user` and until
    `expires`: a certificate login is who its user's own JWT says, with a key of the server's."""
    claims = claims_of(recorded)
    if claims.get("iss") != account.public:
        raise ValidationError("not a JWT this account signed", field="jwt")
    again = {"iss": account.public, "sub": user, "name": claims.get("name", ""),
             "exp": expires, "nats": claims.get("nats", {})}  # fmt: skip
    return encode(again, signer=account)


def authorization_response(
    account: KeyPair, *, user: str, server: str, jwt: str = "", error: str = ""
) -> str:
    """The answer of an auth callout service (ADR-26): `jwt`, the user the server asked about
    (`user`, the key it made for the connection) is, or the `error` it is refused with; for
    `server` alone (its id), signed by the account the callout runs in."""
    nats = {"type": "authorization_response", "version": 2, **({"jwt": jwt} if jwt else {}),
            **({"error": error} if error else {})}  # fmt: skip
    claims = {"iss": account.public, "sub": user, "aud": server, "nats": nats}
    return encode(claims, signer=account)


def creds_text(jwt: str, seed: bytes) -> str:
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
    )


def write_secret(path: Path, text: str | bytes) -> Path:
    """Write a file only its owner can read, created that way (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


def read_creds(path: Path) -> tuple[str, bytes]:
    """(user JWT, seed) of a `.creds` file, or a ValidationError naming the file and why."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ValidationError(f"cannot read {path}: {err.strerror or err}", field="creds") from err
    except UnicodeDecodeError:
        text = ""  # not text at all: not a .creds file either
    found = _CREDS.search(text)
    if found is None:
        why = f"{path} is not a NATS .creds file (a user JWT and its seed)"
        raise ValidationError(why, field="creds")
    return found["jwt"], found["seed"].encode()


def sign_nonce(seed: bytes, nonce: str) -> str:
    """CONNECT's `sig`: the server's nonce signed with the user's nkey, base64url."""
    return _b64(KeyPair(seed).sign(nonce.encode()))
