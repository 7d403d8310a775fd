"""A VM's snapshot and restore events: VirtualMachineSnapshot and VirtualMachineRestore.

Part of the event union (`events/model.py`; use them as `m.SnapshotRequested` through it), folded
by `events/fold_snapshot.py`.
"""

from __future__ import annotations

from typing import Any

from events.event import Event


class SnapshotRequested(Event, frozen=True):
    """A VirtualMachineSnapshot: the VM's spec as it is now, and the node that copies `volumes`
    (the persistent ones) beside it; `skipped` names each ephemeral volume left out, and why."""

    snapshot: str
    online: bool = True
    node: str = ""
    spec: dict[str, Any] = {}
    volumes: list[str] = []
    skipped: dict[str, str] = {}


class SnapshotSucceeded(Event, frozen=True):
    snapshot: str
    node: str = ""
    size_bytes: int = 0  # of the volume copies, as allocated on the node


class SnapshotFailed(Event, frozen=True):
    snapshot: str
    reason: str


class SnapshotDeleted(Event, frozen=True):
    snapshot: str
    node: str = ""  # where its copies were, to be removed
    requested: int = 0  # version of the snapshot's request


class RestoreRequested(Event, frozen=True):
    """A VirtualMachineRestore: the snapshot's volumes are copied back on `node`, then the VM's
    spec becomes the snapshot's."""

    snapshot: str
    restore: str
    node: str = ""


class RestoreSucceeded(Event, frozen=True):
    snapshot: str
    restore: str


class RestoreFailed(Event, frozen=True):
    snapshot: str
    restore: str
    reason: str
