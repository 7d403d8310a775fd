"""What a work item that cannot be carried out leaves in the log: its VM (or volume) failed.

A node meets faults no code path expected: a bug, a host refusing in a way not foreseen. The item
must not be redelivered into the same fault until JetStream gives up, with its VM stuck in a
transitional phase meanwhile; the node records the failure the item's own kind of work has (a
start that failed, a snapshot that failed...) and terminates the message. Pure: the worker sends
what this returns.
"""

from __future__ import annotations

from events import model as m
from events import work as w
from events.names import Ref


def failure_of(item: w.Work, reason: str, *, node: str) -> tuple[Ref, m.Event] | None:
    """The event that says `item` failed for `reason`, on the aggregate it is about, or None for
    clean-up work whose failure changes nothing a user sees (it is logged only)."""
    match item:
        case w.Start():
            return item.ref, m.VMStartFailed(reason=reason, node=node)
        case w.TakeSnapshot():
            return item.ref, m.SnapshotFailed(snapshot=item.snapshot, reason=reason)
        case w.RestoreSnapshot():
            return item.ref, m.RestoreFailed(snapshot=item.snapshot, restore=item.restore,
                                             reason=reason)  # fmt: skip
        case w.PrepareTarget() | w.MigrateSource():
            return item.ref, m.MigrationFailed(migration=item.migration, reason=reason)
        case w.AttachVolume():
            volume = str(item.volume.get("name", ""))
            return item.ref, m.VolumeAttachFailed(volume=volume, reason=reason, node=node)
        case w.Resize():
            resource = "cpu" if item.sockets else "memory"
            return item.ref, m.HotChangeFailed(resource=resource, reason=reason, node=node)
        case w.DumpMemory():
            return item.ref, m.MemoryDumpFailed(claim=item.claim, reason=reason, node=node)
        case w.ProvisionVolume() | w.MoveVolume():
            return item.ref, m.VolumeFailed(reason=reason)
        case w.SoftReboot():  # the guest runs on as it was: the request is over, and why
            return item.ref, m.SoftRebootSent(node=node, method="", error=reason)
        case w.Stop() | w.Pause() | w.Unpause() | w.Reset() | w.DetachVolume():
            # The instance is in a state nobody asked for: failed, the run strategy decides.
            return item.ref, m.VMFailed(reason=reason, node=node)
    return None
