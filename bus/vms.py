"""VMs from the log: the VM fold over the generic event store, the way eventsourcing's
`Repository.get(..., projector_func=...)` keeps its store ignorant of aggregates.

The store (`bus/store.py`) appends, reads and replays any aggregate's events; this repository
alone knows that a VM's history folds into a `VMState` (`events/state.py`), one VM at a time or
every VM at once (`events/rebuild.py`, the lean path of a start-up).
"""

from __future__ import annotations

from bus.store import EventStore
from events.names import Ref, ref_from_subject
from events.rebuild import Folder
from events.state import VMState, fold


class VMRepository:
    """Each VM's state as the fold of its history in `store`."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def get(self, ref: Ref) -> tuple[VMState, int]:
        """The VM's state as the fold of its whole history, and its version."""
        records = await self.store.read(ref)
        return fold(r.envelope for r in records), records[-1].envelope.version if records else 0

    async def all(self, *, verify: bool = True) -> dict[Ref, VMState]:
        """Fold every VM in the log: what a fresh orchestrator or projection does on start."""
        states, _ = await self.rebuild(verify=verify)
        return {r: s for k, s in states.items() if (r := ref_from_subject(k + ".x")) is not None}

    async def rebuild(self, *, verify: bool = True) -> tuple[dict[str, VMState], int]:
        """Every VM's state by subject prefix, and how many events were read to make them.

        The rebuild path (`events/rebuild.py`): the fastest full read that still proves the log
        unaltered.
        """
        folder = Folder(verify=verify)
        n = await self.store.replay_raw(folder.feed)
        self.store.malformed += folder.malformed
        return folder.states, n
