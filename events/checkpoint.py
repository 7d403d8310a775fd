"""Signed checkpoints of the log: the exact bytes a checkpoint's HMAC covers, and the check.

Part of the contract so that a verifier in any language can check a checkpoint: the signature is
HMAC-SHA256, keyed by the audit key, over the checkpoint's JSON with `signature` empty and `heads`
sorted by aggregate, as msgspec writes it (schema field order, no whitespace).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import msgspec

from events.envelope import encode
from events.model import AuditCheckpoint
from events.names import CLUSTER, Ref

AUDIT_REF: Final = Ref("audit", CLUSTER, "checkpoints")
ALGORITHM: Final = "HMAC-SHA256"


def key_id(key: bytes) -> str:
    """A short public name of a key, so a verifier can say which key signed (never the key)."""
    return hashlib.sha256(b"virtbus-audit-key-id:" + key).hexdigest()[:16]


def signed_bytes(cp: AuditCheckpoint) -> bytes:
    canonical = msgspec.structs.replace(cp, signature="", heads=dict(sorted(cp.heads.items())))
    return encode(canonical)


def sign(cp: AuditCheckpoint, key: bytes) -> AuditCheckpoint:
    """`cp` with the key's id and its signature filled in."""
    unsigned = msgspec.structs.replace(cp, key_id=key_id(key), algorithm=ALGORITHM)
    mac = hmac.new(key, signed_bytes(unsigned), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(unsigned, signature=mac)


def signature_ok(cp: AuditCheckpoint, key: bytes) -> bool:
    if cp.algorithm != ALGORITHM:
        return False
    mac = hmac.new(key, signed_bytes(cp), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, cp.signature)
