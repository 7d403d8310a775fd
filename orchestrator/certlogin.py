"""Log in by client certificate: the auth callout service that tells the server who a certificate
names.

In operator mode (JWT accounts) nats-server cannot map a client certificate to a user by itself
(`verify_and_map` is for its static config only); it can ask a service (auth callout, NATS ADR-26).
A client that shows a certificate the stack's CA signed and presents the stack's sentinel
credentials (`bus/trust.py`: a CERTLOGIN user allowed nothing) is held while the server sends this
service an authorization request, a JWT carrying the TLS chain it verified. The service answers
with a user JWT of the virtbus account for the user the certificate's email SAN `<name>@virtbus`
names: the JWT the log recorded when the user was added (its name and permissions, what `auth
add-user` gave it), re-signed for the key the server made for this connection with a short
expiry; or with the reason it refuses: the server then admits the connection as that user,
or refuses it and logs the reason.

Only a chain the server verified counts (a certificate merely shown names no one), and only a
recorded, unrevoked user is admitted. The keys the service makes JWTs for are kept (`Identities`),
so revoking the user cuts its certificate logins off at once too. Requests come unencrypted (no
xkey, which the `nkeys` package cannot do): only the server publishes on the callout subject of an
account whose one other user, the sentinel, may publish nothing, and every answer is signed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.credentials import authorization_response, claims_of, reissued, sign_nonce
from bus.pki import certified_name
from bus.trust import Trust
from events.errors import ValidationError
from events.names import check_name
from orchestrator.users import Identities

log = logging.getLogger("virtbus.certlogin")
AUTH_CALLOUT = "$SYS.REQ.USER.AUTH"  # where the server asks (the callout account's own subject)
LOGIN_TTL_S = 600  # a certificate login's JWT: the server closes the connection when it expires
CONNECT_WITHIN = 10.0


class CertLogin:
    """The callout service on a connection of its own (the callout user of CERTLOGIN)."""

    def __init__(self, nc: Client, identities: Identities, *, trust: Trust) -> None:
        self.nc = nc  # the orchestrator's: its server and its TLS (client certificate and all)
        self.identities = identities
        self.trust = trust

    async def run(self, stop: asyncio.Event) -> None:
        url = self.nc.connected_url
        if url is None:
            return
        jwt, key = self.trust.callout_login()
        try:
            service = await asyncio.wait_for(nats.connect(
                url.geturl(), name="virtbus-certlogin", tls=self.nc.options.get("tls"),
                user_jwt_cb=jwt.encode,
                signature_cb=lambda nonce: sign_nonce(key.seed, nonce).encode(),
                max_reconnect_attempts=-1,
            ), CONNECT_WITHIN)  # fmt: skip
        except Exception as err:  # nats-py raises several types; the orchestrator carries on
            log.error(
                "certificate logins are off: the callout service cannot log in (%r); a "
                "server started before this trust root had certificate-login keys?",
                err,
            )
            await stop.wait()
            return
        try:
            await service.subscribe(AUTH_CALLOUT, cb=self._answer)
            await service.flush()
            log.info("certificate logins answered on %s", AUTH_CALLOUT)
            await stop.wait()
        finally:
            await service.close()

    async def _answer(self, msg: Msg) -> None:
        try:
            request = claims_of(msg.data.decode())["nats"]
            user, server = request["user_nkey"], request["server_id"]["id"]
        except (ValidationError, UnicodeDecodeError, KeyError, TypeError) as err:
            log.warning("an authorization request that is not one (%r): not answered", err)
            return  # the server refuses the connection when its wait ends
        jwt, error = await self.judge(request)
        if error:
            log.warning("certificate login refused: %s", error)
        assert self.trust.certlogin is not None  # callout_login() said so
        answer = authorization_response(self.trust.certlogin, user=user, server=server, jwt=jwt,
                                        error=error)  # fmt: skip
        await msg.respond(answer.encode())

    async def judge(self, request: dict[str, Any]) -> tuple[str, str]:
        """(the user JWT for the key the server made for this connection, "") when the verified
        certificate names a recorded, unrevoked user; ("", why not) otherwise."""
        chains = (request.get("client_tls") or {}).get("verified_chains") or []
        if not chains or not chains[0]:
            return "", "no client certificate the bus's CA verified (a bus run with --mtls asks)"
        name = certified_name(str(chains[0][0]).encode())
        try:
            name = check_name(name, field="certificate") if name is not None else None
        except ValidationError:
            name = None
        if name is None:
            return "", "the client certificate names no user (an email SAN <name>@virtbus)"
        user = await self.identities.user(name)
        if not user.exists:
            why = "is revoked" if user.revoked else "is not a user of this bus"
            return "", f'the client certificate\'s user "{name}" {why}'
        recorded = await self.identities.recorded_jwt(name)
        expires = int(time.time()) + LOGIN_TTL_S
        key = str(request["user_nkey"])
        try:
            jwt = reissued(self.trust.account, recorded, user=key, expires=expires)
        except ValidationError as err:
            return "", f'the record of user "{name}" holds no JWT of this bus ({err.message})'
        self.identities.minted(name, key, expires=expires)
        log.info('certificate login of "%s" (%s)', name, user.role)
        return jwt, ""
