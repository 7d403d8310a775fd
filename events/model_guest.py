"""Operations on a running guest that KubeVirt exposes as VMI subresources and virtbus records:
a soft reboot (`virtctl soft-reboot`), a hard reset (`virtctl reset`), a memory dump into a
claim (`virtctl memory-dump`); and the Service that exposes a guest's port (`virtctl expose`), an
aggregate of its own.

Each is a decision of the orchestrator (with the asker as its actor) and the node's observation of
it, on the VM's own subjects, so `history` says who reset a guest or dumped its memory, and when.
Part of the union in `events/model.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from events.event import Event


class VMResetRequested(Event, frozen=True):
    """A hard reset of the running instance was asked (KubeVirt's `reset` subresource): the node
    resets the domain (virDomainReset) and answers with `DomainRebooted(reset=<this version>)`."""

    vmi_uid: str = ""


class MemoryDumpRequested(Event, frozen=True):
    """A dump of the instance's memory into the claim `claim` was asked (KubeVirt's `memorydump`
    subresource); the VM's `status.memoryDumpRequest` is InProgress until the node answers."""

    claim: str
    vmi_uid: str = ""


class MemoryDumpCompleted(Event, frozen=True):
    """The node wrote the dump (virDomainCoreDumpWithFormat, raw, memory only) as `file_name` in
    the claim's directory."""

    claim: str
    file_name: str
    size_bytes: int = 0
    node: str = ""


class MemoryDumpFailed(Event, frozen=True):
    claim: str
    reason: str
    node: str = ""


class MemoryDumpRemoved(Event, frozen=True):
    """The claim is no longer the VM's memory dump claim (`memory-dump remove`); the claim and the
    dump in it stay, as in KubeVirt."""

    claim: str


class ServiceCreated(Event, frozen=True):
    """A Service for a VM's ports (`virtctl expose`): virtbus's services are headless
    (`clusterIP: None`), their endpoint the VMI's own address on the VM network; `spec` is the
    Service's spec as Kubernetes writes it (a NodePort one's `ports[].nodePort` as allocated),
    `vm` the VM (or VMI, `vm_kind`) it selects."""

    aggregate: ClassVar[str] = "service"
    spec: dict[str, Any]
    vm: str = ""
    vm_kind: str = "VirtualMachine"


class ServiceDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "service"


class VMSoftRebootRequested(Event, frozen=True):
    """A soft reboot of the running instance was asked (`SoftRebootVM`); its node carries it out."""


class SoftRebootSent(Event, frozen=True):
    """The node asked the guest to reboot: through its agent (`agent`) or by the ACPI power
    button (`acpi`, no agent connected); `error` when libvirt refused. The reboot itself is the
    `DomainRebooted` that follows."""

    node: str
    method: str
    error: str = ""
