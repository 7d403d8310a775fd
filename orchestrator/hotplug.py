"""virt-api's judgement of `virtctl addvolume` and `removevolume`: hotplug into the running
VMI, and with `--persist` a change of the VM spec (kept apart from `decide.py`, whose other
commands do not touch the template's volume lists).
"""

from __future__ import annotations

import copy
from typing import Any

from events import commands as c
from events import model as m
from events.errors import ValidationError
from events.names import check_name
from events.state import RUNNING, TERMINATING, VMState

_VOLUME_PATHS = ["template.spec.domain.devices.disks", "template.spec.volumes"]


def _template_lists(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The VM spec's volumes and disks, as lists that may be changed (`spec` is a copy)."""
    vmi = spec.setdefault("template", {}).setdefault("spec", {})
    devices = vmi.setdefault("domain", {}).setdefault("devices", {})
    return vmi.setdefault("volumes", []), devices.setdefault("disks", [])


def add_volume(s: VMState, cmd: c.AddVolume) -> list[m.Event]:
    """`virtctl addvolume`: hotplug into the running VMI; `persist` puts it in the VM spec too."""
    name = check_name(cmd.volume.get("name", ""), field="volume.name")
    sources = [k for k in cmd.volume if k != "name"]
    if sources != ["persistentVolumeClaim"]:
        raise ValidationError(
            f"volume {name!r}: hotplug takes a persistentVolumeClaim volume, got "
            f"{', '.join(sources) or 'no source'}",
            field="volume",
        )
    claim = cmd.volume["persistentVolumeClaim"]
    claim = claim if isinstance(claim, dict) else {}
    check_name(claim.get("claimName", ""), field="volume.persistentVolumeClaim.claimName")
    disk = {"name": name, **cmd.disk}
    if disk["name"] != name:
        raise ValidationError(
            f"disk.name: {disk['name']!r} must be the volume's name {name!r}", field="disk.name"
        )
    kinds = [k for k in ("disk", "lun", "cdrom") if k in disk] or ["disk"]
    if len(kinds) > 1 or kinds[0] == "cdrom":
        raise ValidationError("disk: a hotplugged disk is one of disk or lun", field="disk")
    target = disk.get(kinds[0])
    target = target if isinstance(target, dict) else {}
    if (bus := target.get("bus") or "scsi") != "scsi":
        raise ValidationError(
            f"disk.{kinds[0]}.bus: {bus!r}: hotplug needs the scsi bus",
            field=f"disk.{kinds[0]}.bus",
        )
    disk[kinds[0]] = {**target, "bus": "scsi"}
    if s.status == TERMINATING:
        raise ValidationError("VM is being deleted")
    spec = copy.deepcopy(s.spec)
    volumes, disks = _template_lists(spec)
    if any(v.get("name") == name for v in volumes) or s.volumes.get(name, "Failed") != "Failed":
        raise ValidationError(f'volume "{name}" already exists', field="volume.name")
    if any(d.get("name") == name for d in disks):
        raise ValidationError(f'disk "{name}" already exists', field="volume.name")
    volume = {**cmd.volume, "name": name}
    events: list[m.Event] = []
    if cmd.persist:
        volumes.append(volume)
        disks.append(disk)
        late = s.running and s.phase != RUNNING  # the instance is starting with the old spec
        events.append(m.VMSpecChanged(spec=spec, changed=_VOLUME_PATHS, restart_required=late))
    if s.phase == RUNNING:
        events.append(m.VolumeAttachRequested(volume=volume, disk=disk))
    elif not cmd.persist:
        raise ValidationError(
            "VMI is not running; use --persist to add the volume to the VM spec", field="name"
        )
    return events


def remove_volume(s: VMState, cmd: c.RemoveVolume) -> list[m.Event]:
    """`virtctl removevolume`: unplug a hotplugged volume; `persist` removes it from the spec."""
    name = cmd.volume
    if s.status == TERMINATING:
        raise ValidationError("VM is being deleted")
    spec = copy.deepcopy(s.spec)
    volumes, disks = _template_lists(spec)
    declared = any(v.get("name") == name for v in volumes)
    plugged = name in s.hotplug and s.phase == RUNNING
    if not plugged and not declared:
        raise ValidationError(f'volume "{name}" not found', field="volume")
    if not plugged and not cmd.persist:
        if s.phase != RUNNING:
            raise ValidationError(
                "VMI is not running; use --persist to remove the volume from the VM spec",
                field="name",
            )
        raise ValidationError(
            f'volume "{name}" is not hotplugged; use --persist to remove it from the VM spec',
            field="volume",
        )
    if plugged and s.volumes.get(name) == "Detaching":
        raise ValidationError(f'volume "{name}" is already being removed', field="volume")
    events: list[m.Event] = []
    if cmd.persist and declared:
        volumes[:] = [v for v in volumes if v.get("name") != name]
        disks[:] = [d for d in disks if d.get("name") != name]
        # A volume the instance booted with stays in it until the next start.
        events.append(
            m.VMSpecChanged(
                spec=spec, changed=_VOLUME_PATHS, restart_required=s.running and not plugged
            )
        )
    if plugged:
        events.append(m.VolumeDetachRequested(volume=name))
    return events
