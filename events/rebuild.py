"""Rebuilding every VM from the raw log: the hot loop of a start-up, kept apart and lean.

Per event it decodes only what the fold reads (`Stamp`), checks the hash chain on the raw bytes
and folds. It is fed the whole stream and skips what is not a VM's: nats-server delivers through
a subject-filtered consumer more slowly than through a plain one (0.82 of it in an A/B of 8
rounds here), which costs more than skipping the few other subjects.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from events.envelope import STAMP_DECODER, Chain, attested
from events.names import aggregate_key
from events.state import VMState, apply

VM_EVENTS: Final = "virt.vm."
_BAD: Final = (msgspec.DecodeError, msgspec.ValidationError)


class Folder:
    """Raw events in log order -> every VM's state, chain checked when `verify`."""

    def __init__(self, *, verify: bool) -> None:
        self.verify = verify
        self.states: dict[str, VMState] = {}
        self.malformed = 0
        self.chain = Chain(strict=True)

    def feed(self, data: bytes, subject: str, seq: int) -> None:
        if not subject.startswith(VM_EVENTS):
            return
        try:
            stamp = STAMP_DECODER.decode(data)
        except _BAD:
            self.malformed += 1
            return
        key = aggregate_key(subject)
        if self.verify:
            digest = hashlib.sha256(data).hexdigest()
            self.chain.step(key, stamp.version, stamp.prevhash, digest, seq=seq, subject=subject)
        self.states[key] = apply(self.states.get(key, _EMPTY), attested(stamp, subject))


_EMPTY: Final = VMState()
