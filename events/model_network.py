"""A VM instance's address on the VM network: allocated and released by the orchestrator.

KubeVirt's VMI takes its pod's IP; virtbus has no pods to lend one, so the orchestrator hands each
instance an address from a cluster-wide pool (a CIDR of its settings) when it is scheduled and
takes it back when the instance ends. Both are events on the VM's own subjects, so which address is
whose is a fold of the log: no duplicate survives a restart of anything, and a migration keeps it
(the instance, and so its address, is the same). Part of the union in `events/model.py`.
"""

from __future__ import annotations

from events.event import Event


class IPAllocated(Event, frozen=True):
    """`address` (in the pool `cidr`) is the instance `vmi_uid`'s; `mac` its NIC's address."""

    address: str
    vmi_uid: str
    mac: str = ""
    cidr: str = ""


class IPReleased(Event, frozen=True):
    """The instance that held `address` is over: the address is free again."""

    address: str
    vmi_uid: str = ""
