"""Operations on a running guest that KubeVirt exposes as VMI subresources and virtbus records:
a hard reset (`virtctl reset`), a memory dump into a claim (`virtctl memory-dump`).

Each is a decision of the orchestrator (with the asker as its actor) and the node's observation of
it, on the VM's own subjects, so `history` says who reset a guest or dumped its memory, and when.
Part of the union in `events/model.py`.
"""

from __future__ import annotations

from events.event import Event


class VMResetRequested(Event, frozen=True):
    """A hard reset of the running instance was asked (KubeVirt's `reset` subresource): the node
    resets the domain (virDomainReset) and answers with `DomainRebooted(reset=<this version>)`."""

    vmi_uid: str = ""
