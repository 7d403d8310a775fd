"""A VM's hotplug and sizing events: `addvolume` and `removevolume` on a running VM; CPU sockets
and guest memory changed live (KubeVirt's LiveUpdate rollout strategy) or left for the next
start; the instance type and preference captured to size the VM (KubeVirt's ControllerRevisions).

Part of the event union (`events/model.py`; use them as `m.VolumeAttached` through it), folded by
`events/fold_hotplug.py` (the capture by `fold_lifecycle.py`). The volumes themselves (virtbus's
PVCs) are an aggregate of their own: their events are in `events/model_aggregates.py`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events.event import Event


class VolumeAttachRequested(Event, frozen=True):
    volume: dict[str, Any]
    disk: dict[str, Any]


class VolumeAttached(Event, frozen=True):
    volume: str
    node: str = ""


class VolumeAttachFailed(Event, frozen=True):
    """A hotplug the node could not carry out: the volume is missing, or libvirt refused."""

    volume: str
    reason: str = ""
    node: str = ""


class VolumeDetachRequested(Event, frozen=True):
    volume: str


class VolumeDetached(Event, frozen=True):
    volume: str
    node: str = ""


# --- CPU and memory hotplug (KubeVirt's LiveUpdate rollout strategy) ----------------------------


class InstanceSize(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What an instance booted with, as KubeVirt's VMI spec says it: its CPU topology and guest
    memory, and the most hotplug may grow them to (`maxSockets`, `maxGuest`; 0: no hotplug)."""

    sockets: int = 1
    cores: int = 1
    threads: int = 1
    max_sockets: int = 0
    guest: int = 0  # bytes
    max_guest: int = 0  # bytes


class HotVCPUChangeRequested(Event, frozen=True):
    """The running instance is to have `sockets` CPU sockets (the VMI's HotVCPUChange)."""

    sockets: int


class HotVCPUChanged(Event, frozen=True):
    sockets: int
    node: str = ""


class HotMemoryChangeRequested(Event, frozen=True):
    """The running instance's guest memory is to be `guest` bytes (the VMI's HotMemoryChange)."""

    guest: int


class HotMemoryChanged(Event, frozen=True):
    guest: int
    node: str = ""


class GuestMemoryPlugged(Event, frozen=True):
    """The guest's virtio-mem driver plugged (or unplugged) memory: `plugged` bytes of the device
    are in use now (libvirt's memory-device-size-change event). KubeVirt's guestCurrent is what
    the guest has, not what was asked of it: the boot memory plus this."""

    plugged: int
    node: str = ""


class HotChangeFailed(Event, frozen=True):
    """The node could not plug what was asked (`resource`: cpu or memory): libvirt's reason."""

    resource: str
    reason: str = ""
    node: str = ""


class VMRestartRequired(Event, frozen=True):
    """A change to the VM's spec that the running instance cannot take live (KubeVirt's
    RestartRequired condition, with its message); it takes effect at the next start."""

    message: str


class InstancetypeRevisionCaptured(Event, frozen=True):
    """KubeVirt's ControllerRevision: the spec of the VM's instance type (or preference, as
    `which` says) as it was when captured, which sizes the VM from now on whatever becomes of
    the object, until the VM names another one."""

    which: str  # "instancetype" or "preference"
    object_kind: str  # KubeVirt's, e.g. VirtualMachineClusterInstancetype
    name: str
    revision: str
    spec: dict[str, Any] = {}
