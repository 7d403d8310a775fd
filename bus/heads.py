"""Where each aggregate's log stands, as one process's writers know it.

An append names the version and stream sequence it expects its aggregate to be at and chains to
the last event's hash, so a writer needs its aggregate's head first. A lookup is a round trip to
the server; a head at hand is free. A head can be at hand because this process wrote it, read
it, or was told it with its work (`took`). A stale one costs a conflict and then a lookup,
never a wrong append: the server checks the sequence.
"""

from __future__ import annotations

import msgspec

from events.names import Ref
from events.work import Work


class Head(msgspec.Struct, frozen=True):
    version: int = 0
    seq: int = 0
    hash: str = ""


class Heads(dict[str, Head]):
    """Heads by `Ref.prefix`."""

    def tip(self, ref: Ref) -> Head | None:
        """`ref`'s head as this process last wrote or read it (None: not at hand)."""
        return self.get(ref.prefix)

    def knows(self, ref: Ref) -> bool:
        return ref.prefix in self

    def assume(self, prefix: str, head: Head) -> None:
        """Take `head` as the aggregate's at `prefix` unless a newer one is at hand."""
        known = self.get(prefix)
        if known is None or known.seq < head.seq:
            self[prefix] = head

    def took(self, item: Work) -> None:
        """A work item arrived: where its VM's log stood when it was sent is that VM's head
        (the node's first observation then needs no lookup)."""
        if (tip := item.tip) is not None:
            self.assume(item.ref.prefix, Head(tip.version, tip.seq, tip.hash))
