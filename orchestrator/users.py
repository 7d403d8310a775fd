"""The orchestrator's side of identity: who an authenticated caller is, the JWTs it signs for new
users, and the revocations it hands to the server.

It holds the stack's trust (the account key signs users, the operator key re-signs the account
with its revocations), so adding or revoking a user needs no server restart: a revocation is
pushed to the server as an account claim update, which cuts the user's connections at once, and
kept beside the keys, so a restarted server refuses the revoked from its first second.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats
from nats.aio.client import Client

from bus.credentials import Permissions, user_jwt
from bus.roles import dispatcher_permissions, node_permissions, user_permissions
from bus.store import EventStore
from bus.trust import Trust, revoked_now
from events import commands as c
from events import model as m
from events.envelope import Recorded
from events.errors import ValidationError
from events.names import CLUSTER, Ref
from events.users import DISPATCHER, NODE, UserState, fold_user

log = logging.getLogger("virtbus.users")
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
CLAIMS_WITHIN = 10.0


class Identities:
    """Users as the log says, cached per name (each read once, forgotten when it changes)."""

    def __init__(self, nc: Client, store: EventStore, *, trust: Trust | None) -> None:
        self.nc = nc
        self.store = store
        self.trust = trust
        self._known: dict[str, UserState] = {}
        self._jwts: dict[str, str] = {}  # name -> its last UserAdded's JWT (what it may do)
        self._minted: dict[str, dict[str, int]] = {}  # name -> key -> expiry: certificate logins

    def minted(self, name: str, key: str, *, expires: int) -> None:
        """A certificate login's JWT was made for `key` (until `expires`): revoking `name` revokes
        it too, while it lasts."""
        now = time.time()
        alive = {k: e for k, e in self._minted.get(name, {}).items() if e > now}
        self._minted[name] = alive | {key: expires}

    async def user(self, name: str) -> UserState:
        if (known := self._known.get(name)) is None:
            history = await self.store.read(Ref("user", CLUSTER, name))
            known = self._known[name] = fold_user(name, (r.envelope for r in history))
            added = [e for r in history if isinstance(e := r.envelope.data, m.UserAdded)]
            self._jwts[name] = added[-1].jwt if added else ""
        return known

    async def recorded_jwt(self, name: str) -> str:
        """The JWT the account signed when `name` was last added ("" if its record has none)."""
        await self.user(name)
        return self._jwts.get(name, "")

    def changed(self, name: str) -> None:
        self._known.pop(name, None)
        self._jwts.pop(name, None)

    def sign(self, cmd: c.Command) -> str:
        """The user JWT an AddUser asks for, with its role's permissions ("" for other commands)."""
        if not isinstance(cmd, c.AddUser):
            return ""
        if self.trust is None:
            raise ValidationError(
                "users are added by an orchestrator that holds the stack's keys (virtbus up)",
                field="kind",
            )
        try:
            perms: Permissions | None
            if cmd.role in (NODE, DISPATCHER):
                perms = (node_permissions if cmd.role == NODE else dispatcher_permissions)(cmd.name)
            else:
                perms = user_permissions(cmd.role, name=cmd.name,
                                         namespaces=tuple(cmd.namespaces))  # fmt: skip
        except ValueError:
            return ""  # not a role: the decision refuses it, naming the field
        return user_jwt(self.trust.account, cmd.public_key, name=cmd.name, permissions=perms)

    async def revocations(self) -> dict[str, int]:
        """Every revoked key in the log and since when, and the keys of the revoked users'
        certificate logins still alive."""
        revoked: dict[str, int] = {}

        def keep(rec: Recorded) -> None:
            if isinstance(e := rec.envelope.data, m.UserRevoked):
                revoked.update(dict.fromkeys(e.public_keys, e.revoked_at))

        await self.store.replay(keep, subjects=["virt.user.>"], verify=False)
        now = time.time()
        for name, keys in list(self._minted.items()):
            if not (await self.user(name)).exists:
                revoked.update({k: revoked_now() for k, e in keys.items() if e > now})
        return revoked

    async def push_revocations(self) -> None:
        """Tell the server (and the keys' directory, for its next start) who is revoked."""
        if self.trust is None:
            return
        revoked = await self.revocations()
        try:
            self.trust.save_revocations(revoked)
        except OSError as err:  # a read-only trust root (a Secret): the server keeps the claim
            log.warning("revocations not kept beside the keys (%s): the server has them", err)
        url = self.nc.connected_url
        if url is None:
            return
        # As the system account's user, over this connection's own TLS (its client certificate,
        # where the bus asks for one)
        system = await asyncio.wait_for(nats.connect(
            url.geturl(), name="virtbus-orchestrator-claims", tls=self.nc.options.get("tls"),
            user_credentials=str(self.trust.system_creds()), max_reconnect_attempts=0,
        ), CLAIMS_WITHIN)  # fmt: skip
        try:
            claim = self.trust.account_claim(revocations=revoked)
            reply = await system.request(CLAIMS_UPDATE, claim.encode(), timeout=5)
            log.info("account claims pushed (%d revoked keys): %s", len(revoked), reply.data[:200])
        finally:
            await system.close()
