"""A VM's volume hotplug events: `addvolume` and `removevolume` on a running VM.

Part of the event union (`events/model.py`; use them as `m.VolumeAttached` through it), folded by
`events/fold_hotplug.py`. The volumes themselves (virtbus's PVCs) are an aggregate of their own:
their events are in `events/model_aggregates.py`.
"""

from __future__ import annotations

from typing import Any

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
