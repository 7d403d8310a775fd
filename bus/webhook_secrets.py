"""Signing secrets live in a KV bucket of their own, never on the event log.

The log is what auditors read (and it can never be deleted from), so a `WebhookSubscribed` event
carries only `secret_ref`, the key of the secret in `virt_webhook_secrets`. Access to that bucket
is separate (NATS permissions), a secret can be rotated or destroyed without touching history, and
the KV keeps the last few values so a rotation can be audited by whoever may read secrets.

A value holds several secrets during a rotation: the new one, and the old ones until their
`until`; every delivery is signed with each of them (`webhook-signature: v1,a v1,b`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from typing import Final

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from events.errors import ValidationError

BUCKET: Final = "virt_webhook_secrets"
PREFIX: Final = "whsec_"


class Secret(msgspec.Struct, frozen=True):
    key: str
    until: float | None = None  # epoch seconds after which an old secret stops signing


class SecretSet(msgspec.Struct, frozen=True):
    secrets: list[Secret] = []

    def live(self, now: float | None = None) -> list[Secret]:
        now = time.time() if now is None else now
        return [s for s in self.secrets if s.until is None or s.until > now]


_decode: Final = msgspec.json.Decoder(SecretSet).decode
_encode: Final = msgspec.json.Encoder().encode


def generate() -> str:
    return PREFIX + base64.b64encode(os.urandom(32)).decode()


def check_secret(value: str, *, field: str = "secret") -> bytes:
    """The HMAC key of a `whsec_<base64>` secret, or a ValidationError that never echoes it."""
    if not value.startswith(PREFIX):
        raise ValidationError(f"{field}: a secret starts with {PREFIX!r}", field=field)
    try:
        key = base64.b64decode(value[len(PREFIX) :], validate=True)
    except ValueError:
        raise ValidationError(f"{field}: the part after {PREFIX!r} is not base64",
                              field=field) from None  # fmt: skip
    if not 24 <= len(key) <= 64:
        raise ValidationError(f"{field}: the key must be 24 to 64 bytes, it is {len(key)}",
                              field=field)  # fmt: skip
    return key


class Signer:
    """`webhook-signature` values from a set of HMAC-SHA256 keys, each keyed once: a delivery
    copies the keyed state rather than keying anew (half the cost of a signature)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._macs = [hmac.new(k, digestmod=hashlib.sha256) for k in keys]

    def __len__(self) -> int:
        return len(self._macs)

    def sign(self, *, msg_id: str, timestamp: int, body: bytes) -> str:
        """One `v1,<base64 HMAC-SHA256>` per key, space separated, over
        `<msg_id>.<timestamp>.<body>` (fed in pieces: the body is never copied)."""
        prefix = f"{msg_id}.{timestamp}.".encode()
        out = []
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(prefix)
            mac.update(body)
            out.append("v1," + base64.b64encode(mac.digest()).decode())
        return " ".join(out)


def sign(keys: Sequence[bytes], *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header for `keys`."""
    return Signer(keys).sign(msg_id=msg_id, timestamp=timestamp, body=body)


def new_ref(name: str) -> str:
    return f"{name}.{os.urandom(6).hex()}"


async def bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=BUCKET, history=5, storage=StorageType.FILE)
        return await js.create_key_value(cfg)


async def store(js: JetStreamContext, ref: str, value: str) -> None:
    check_secret(value)
    kv = await bucket(js)
    await kv.put(ref, _encode(SecretSet([Secret(value)])))


async def load(kv: KeyValue, ref: str) -> SecretSet | None:
    try:
        entry = await kv.get(ref)
    except KeyNotFoundError:
        return None
    return _decode(entry.value) if entry.value else None


async def rotate(js: JetStreamContext, ref: str, value: str, *, grace_s: float) -> None:
    """Make `value` the signing secret; the current ones keep signing for `grace_s` more."""
    check_secret(value)
    kv = await bucket(js)
    old = await load(kv, ref)
    if old is None:
        raise ValidationError(f"secret: no secret is stored under {ref!r}", field="secret")
    until = time.time() + grace_s
    kept = [Secret(s.key, until if s.until is None else min(s.until, until)) for s in old.live()]
    await kv.put(ref, _encode(SecretSet([Secret(value), *kept])))


async def forget(js: JetStreamContext, ref: str) -> None:
    kv = await bucket(js)
    with contextlib.suppress(KeyNotFoundError):
        await kv.purge(ref)


def keys_of(secrets: SecretSet | None) -> list[bytes]:
    return [check_secret(s.key) for s in secrets.live()] if secrets else []
