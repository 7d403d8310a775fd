"""The stack's trust root on disk: the keys that sign identities, the CA, and everyone's `.creds`.

`virtbus up --data-dir D` makes all of it on its first run and reuses it after, so `make run` needs
no setup step and a restart keeps every credential valid:

    D/keys/{operator,account,system}.nk   nkey seeds, 0600: whoever holds them mints identities
    D/keys/{certlogin,callout}.nk         the certificate-login account and its callout service
    D/keys/revocations.json               revoked user keys and since when (the log has them too)
    D/creds/<name>.creds                  a user JWT and seed per identity (admin, nodes...), 0600
    D/creds/sentinel.creds                no permissions: "log me in by my client certificate"
    D/tls/ca.pem, ca-key.pem              the bus's own CA (the key 0600)
    D/tls/server.pem, server-key.pem      the nats-server's certificate for 127.0.0.1 and localhost
    D/jwt/                                the nats-server's account resolver (its own files)
    D/identities.json                     in a trust dir made for a pod (`virtbus deploy
                                          secrets`): the stack's own users' roles and JWTs

The server trusts the operator key alone; the operator signs the virtbus account (JetStream on)
and the system account (claim updates), and the virtbus account signs every user.

A third account, CERTLOGIN, holds no one but the sentinel (a user every certificate login presents,
since operator mode admits no connection without a JWT) and the orchestrator's callout service: the
server asks that service who each sentinel connection is, and it answers with a user of the virtbus
account named by the client certificate (`orchestrator/certlogin.py`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import pki
from bus.credentials import (
    SENTINEL,
    SENTINEL_TAG,
    KeyPair,
    Permissions,
    account_jwt,
    creds_text,
    operator_jwt,
    read_creds,
    user_jwt,
    write_secret,
)
from events.errors import ValidationError

ACCOUNT_NAME = "VIRTBUS"
_PRIVATE_SYSTEM_CREDS: dict[Path, Path] = {}  # trust root (read-only) -> this process's copy
SYSTEM_NAME = "SYS"
CERTLOGIN_NAME = "CERTLOGIN"
SERVER_HOSTS = ("127.0.0.1", "localhost")
MAX_CONTROL_LINE = 32 * 1024  # bytes: a user JWT of ~40 namespaces
IDENTITIES_FILE = "identities.json"  # the stack's own users, for an orchestrator in a pod


def _keypair(path: Path, kind: str) -> KeyPair:
    if path.is_file():
        return KeyPair(path.read_bytes().strip())
    pair = KeyPair.new(kind)
    write_secret(path, pair.seed)
    return pair


@dataclass(frozen=True)
class Trust:
    """The keys of one stack, loaded: mint users, and configure the server that trusts them."""

    root: Path
    operator: KeyPair
    account: KeyPair
    system: KeyPair
    certlogin: KeyPair | None = None  # None: a trust root from before certificate logins
    callout: KeyPair | None = None

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    def creds_file(self, name: str) -> Path:
        return self.root / "creds" / f"{name}.creds"

    def issue(
        self, name: str, *, permissions: Permissions | None = None, out: Path | None = None
    ) -> Path:
        """A fresh user key and its JWT signed by the virtbus account, written as `.creds`."""
        user = KeyPair.new("user")
        jwt = user_jwt(self.account, user.public, name=name, permissions=permissions)
        return write_secret(out or self.creds_file(name), creds_text(jwt, user.seed))

    def ensure_creds(self, name: str, *, permissions: Permissions | None = None) -> Path:
        """`name`'s `.creds`, issued once and kept: a restarted stack's clients keep theirs."""
        path = self.creds_file(name)
        if path.is_file():
            read_creds(path)  # a damaged file is said now, not as a refused connection later
            return path
        return self.issue(name, permissions=permissions)

    def system_creds(self) -> Path:
        """A system-account user: it pushes account claims (revocations) to the server."""
        path = _PRIVATE_SYSTEM_CREDS.get(self.root) or self.creds_file("system")
        if path.is_file():
            return path
        user = KeyPair.new("user")
        text = creds_text(user_jwt(self.system, user.public, name="system"), user.seed)
        try:
            return write_secret(path, text)
        except OSError:  # a read-only root (a mounted Secret): a private file of this process's,
            private = Path(tempfile.mkdtemp(prefix="virtbus-system-")) / "system.creds"
            _PRIVATE_SYSTEM_CREDS[self.root] = write_secret(private, text)  # made once, reused
            return private

    def sentinel_creds(self) -> Path:
        """The sentinel's `.creds` (made once): a CERTLOGIN user allowed no subject at all, which
        the server admits only as whoever the callout service says its certificate names."""
        path = self.creds_file(SENTINEL)
        if path.is_file() or self.certlogin is None:
            return path
        user = KeyPair.new("user")
        jwt = user_jwt(self.certlogin, user.public, name=SENTINEL, tags=(SENTINEL_TAG,),
                       permissions=Permissions((), (), nothing=True))  # fmt: skip
        return write_secret(path, creds_text(jwt, user.seed))

    def callout_login(self) -> tuple[str, KeyPair]:
        """The callout service's user JWT (CERTLOGIN's `auth_users`: not itself called out) and
        key; only a process holding the keys can be it."""
        if self.certlogin is None or self.callout is None:
            raise ValidationError(f"{self.root} holds no certificate-login keys", field="trust-dir")
        jwt = user_jwt(self.certlogin, self.callout.public, name="certlogin-callout")
        return jwt, self.callout

    def identities_json(self, roles: dict[str, str]) -> str:
        """The roles and JWTs (no seed) of this stack's own users (name -> role), for an
        orchestrator run away from the data dir (a pod) to record them as `virtbus up` does."""
        users = {n: {"role": r, "jwt": read_creds(self.creds_file(n))[0]} for n, r in roles.items()}
        return json.dumps(users, indent=2, sort_keys=True) + "\n"

    def own_identities(self) -> dict[str, tuple[str, str]]:
        """What `identities.json` beside the keys lists (name -> (role, JWT)); none if absent."""
        path = self.root / IDENTITIES_FILE
        try:
            users = json.loads(path.read_text())
            return {str(n): (str(u["role"]), str(u["jwt"])) for n, u in users.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            why = f"{path}: not a map of name -> {{role, jwt}} ({err})"
            raise ValidationError(why, field="trust-dir") from err

    @property
    def _revocations_file(self) -> Path:
        return self.root / "keys" / "revocations.json"

    def save_revocations(self, revoked: dict[str, int]) -> None:
        """Kept beside the keys: the server a restarted stack runs refuses them from the start."""
        write_secret(self._revocations_file, json.dumps(revoked, sort_keys=True))

    def saved_revocations(self) -> dict[str, int]:
        try:
            saved = json.loads(self._revocations_file.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in saved.items()}

    def account_claim(self, *, revocations: dict[str, int] | None = None) -> str:
        return account_jwt(self.operator, self.account.public, name=ACCOUNT_NAME,
                           revocations=revocations)  # fmt: skip

    def route_tls(self) -> dict[str, Any]:
        """The `cluster.tls` block of a cluster's servers: each shows a route certificate of the
        stack's CA and accepts only peers that show one (routes authenticated by mutual TLS)."""
        tls = self.root / "tls"
        cert, key = tls / "route.pem", tls / "route-key.pem"
        if not cert.is_file() or not key.is_file():
            ca = pki.Issued((tls / "ca.pem").read_bytes(), (tls / "ca-key.pem").read_bytes())
            leaf = pki.issue(ca, "nats-route", hosts=SERVER_HOSTS, route=True)
            write_secret(key, leaf.key_pem)
            cert.write_bytes(leaf.cert_pem)
        return {"cert_file": str(cert), "key_file": str(key), "ca_file": str(tls / "ca.pem"),
                "verify": True, "timeout": 5}  # fmt: skip

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """`name`'s client certificate and key for mutual TLS (`D/tls/clients/`), issued once by
        the stack's CA and kept; its email SAN is `name@virtbus`."""
        clients = self.root / "tls" / "clients"
        cert, key = clients / f"{name}.pem", clients / f"{name}-key.pem"
        if not cert.is_file() or not key.is_file():
            tls = self.root / "tls"
            ca = pki.Issued((tls / "ca.pem").read_bytes(), (tls / "ca-key.pem").read_bytes())
            leaf = pki.issue(ca, f"{name}@virtbus", client=True)
            write_secret(key, leaf.key_pem)
            cert.write_bytes(leaf.cert_pem)
        return cert, key

    def server_config(
        self, *, revocations: dict[str, int] | None = None, mutual_tls: bool = False
    ) -> dict[str, Any]:
        """The nats-server settings that make it refuse anyone this trust did not sign, over TLS
        (`mutual_tls`: and anyone without a client certificate its CA signed)."""
        system = account_jwt(self.operator, self.system.public, name=SYSTEM_NAME, jetstream=False)
        revocations = self.saved_revocations() if revocations is None else revocations
        tls = self.root / "tls"
        preload = {
            self.system.public: system,
            self.account.public: self.account_claim(revocations=revocations),
        }
        if self.certlogin is not None and self.callout is not None:
            preload[self.certlogin.public] = account_jwt(
                self.operator, self.certlogin.public, name=CERTLOGIN_NAME, jetstream=False,
                callout=(self.callout.public, self.account.public),
            )  # fmt: skip
        return {
            # a user's JWT rides in its CONNECT line; a role's subjects (`bus/readscope.py`: its
            # read slots per namespace) pass the 4 KiB default with a few namespaces
            "max_control_line": MAX_CONTROL_LINE,
            "operator": operator_jwt(self.operator, system_account=self.system.public),
            "system_account": self.system.public,
            "resolver": {"type": "full", "dir": str(self.root / "jwt"), "allow_delete": False},
            "resolver_preload": preload,
            "tls": {
                "cert_file": str(tls / "server.pem"),
                "key_file": str(tls / "server-key.pem"),
                "timeout": 5,
                **({"ca_file": str(tls / "ca.pem"), "verify": True} if mutual_tls else {}),
            },
        }


def ensure(root: Path) -> Trust:
    """Load the trust root under `root`, making what is missing (keys, CA, server certificate)."""
    root = root.resolve()
    keys = root / "keys"
    trust = Trust(
        root,
        operator=_keypair(keys / "operator.nk", "operator"),
        account=_keypair(keys / "account.nk", "account"),
        system=_keypair(keys / "system.nk", "account"),
        certlogin=_keypair(keys / "certlogin.nk", "account"),
        callout=_keypair(keys / "callout.nk", "user"),
    )
    trust.sentinel_creds()
    tls = root / "tls"
    if not (tls / "ca.pem").is_file() or not (tls / "ca-key.pem").is_file():
        ca = pki.new_ca()
        write_secret(tls / "ca-key.pem", ca.key_pem)
        (tls / "ca.pem").write_bytes(ca.cert_pem)
        (tls / "server.pem").unlink(missing_ok=True)  # signed by the CA that is gone
    if not (tls / "server.pem").is_file():
        ca = pki.Issued((tls / "ca.pem").read_bytes(), (tls / "ca-key.pem").read_bytes())
        leaf = pki.issue(ca, "nats-server", hosts=SERVER_HOSTS)
        write_secret(tls / "server-key.pem", leaf.key_pem)
        (tls / "server.pem").write_bytes(leaf.cert_pem)
    (root / "jwt").mkdir(parents=True, exist_ok=True)
    return trust


def load(root: Path) -> Trust:
    """The trust root another process made (`virtbus up`, or copied into a Secret): the keys must
    be there; nothing is made (a new key would sign identities no server trusts)."""
    root = root.resolve()
    needed = [root / "keys" / f"{n}.nk" for n in ("operator", "account", "system")]
    missing = [str(p.relative_to(root)) for p in [*needed, root / "tls" / "ca.pem"]
               if not p.is_file()]  # fmt: skip
    if missing:
        why = f"{root} is not a virtbus trust root: no {', '.join(missing)}"
        raise ValidationError(why, field="trust-dir")
    operator, account, system = (KeyPair(p.read_bytes().strip()) for p in needed)
    certlogin, callout = (
        KeyPair(p.read_bytes().strip()) if p.is_file() else None
        for p in (root / "keys" / "certlogin.nk", root / "keys" / "callout.nk")
    )
    return Trust(root, operator=operator, account=account, system=system, certlogin=certlogin,
                 callout=callout)  # fmt: skip


def revoked_now() -> int:
    """A revocation time that covers every JWT issued up to now (NATS compares whole seconds)."""
    return int(time.time()) + 1
