"""The kubectl and virtctl verbs of `virtbus`: schema, apply, the lifecycle verbs, hotplug, scale,
get, describe, wait.

The typer layer only: each verb checks its flags and calls one coroutine of `verbs.py` (or sends
one command through `cli_common.lifecycle`). `register` adds them to the `virtbus` app in the order
`virtbus --help` lists them.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import msgspec
import typer

from bus.connect import server_url
from events import commands as c
from events.commands import AnyCommand
from events.envelope import Envelope
from events.errors import ValidationError
from virtctl import kinds as k
from virtctl.cli_common import (
    KustomizeOpt,
    NameArg,
    NsOpt,
    ServerOpt,
    actor,
    each_source,
    finish,
    lifecycle,
    run,
    usage,
)


def schema(
    which: Annotated[str, typer.Argument(help="commands, events or all")] = "all",
) -> None:
    """Print the JSON Schema of commands and events, for clients in other languages."""
    schemas = {"commands": AnyCommand, "events": Envelope}
    if which not in (*schemas, "all"):
        raise usage(f"schema: unknown {which!r}; use commands, events or all")
    chosen = schemas if which == "all" else {which: schemas[which]}
    out = {k: msgspec.json.schema(v) for k, v in chosen.items()}
    sys.stdout.write(json.dumps(out if which == "all" else out[which], indent=2) + "\n")


def apply(
    filename: Annotated[
        list[str] | None,
        typer.Option("--filename", "-f", help="manifest file, or - for stdin; repeatable"),
    ] = None,
    kustomize: KustomizeOpt = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Create or update objects from KubeVirt manifests (multi-document YAML), file after file,
    or from a kustomization directory (`-k`)."""
    from virtctl.verbs import apply_file

    url, who = server_url(server), actor()
    finish(run(each_source(filename, kustomize, lambda path, kz: apply_file(
        url, path=path, namespace=namespace, actor=who, kustomize=kz))))  # fmt: skip


def start(
    name: NameArg,
    paused: Annotated[bool, typer.Option("--paused", help="start the VMI paused")] = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Start a VM (`--paused`: its VMI is paused as soon as it runs)."""
    lifecycle(c.StartVM(name=name, namespace=namespace, paused=paused, actor=actor()), server)


def stop(
    name: NameArg,
    namespace: NsOpt = "default",
    grace_period: Annotated[int | None, typer.Option("--grace-period", min=0)] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    server: ServerOpt = None,
) -> None:
    """Stop a VM (graceful shutdown, then destroy after the grace period)."""
    cmd = c.StopVM(name=name, namespace=namespace, grace_period_seconds=grace_period, force=force,
                   actor=actor())  # fmt: skip
    lifecycle(cmd, server)


def restart(
    name: NameArg,
    namespace: NsOpt = "default",
    grace_period: Annotated[int | None, typer.Option("--grace-period", min=0)] = None,
    force: Annotated[bool, typer.Option("--force", help="with --grace-period 0: at once")] = False,
    server: ServerOpt = None,
) -> None:
    """Restart a running VM (`--force --grace-period 0`: its instance is destroyed at once)."""
    if force and grace_period != 0:
        raise usage("--force: restarting by force needs --grace-period 0, as with virtctl")
    cmd = c.RestartVM(name=name, namespace=namespace, grace_period_seconds=grace_period,
                      force=force, actor=actor())  # fmt: skip
    lifecycle(cmd, server)


KindOrName = Annotated[str, typer.Argument(help="vm NAME, vmi NAME, or the NAME alone")]


def _vm_or_vmi(what: str, name: str | None, verb: str) -> str:
    """`pause vm NAME`, `pause vmi NAME` (virtctl's) or `pause NAME` (virtbus's older form)."""
    if name is None:
        return what
    if what.lower() not in ("vm", "vmi", "virtualmachine", "virtualmachineinstance"):
        raise usage(f"{verb} {what}: use {verb} vm NAME, {verb} vmi NAME or {verb} NAME")
    return name


def pause(
    what: KindOrName,
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Pause a running VM's instance (`pause vm|vmi NAME`)."""
    named = _vm_or_vmi(what, name, "pause")
    lifecycle(c.PauseVM(name=named, namespace=namespace, actor=actor()), server)


def soft_reboot(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Reboot a running VM's guest (virtctl's soft-reboot): through its guest agent, or by ACPI
    when no agent is connected."""
    lifecycle(c.SoftRebootVM(name=name, namespace=namespace, actor=actor()), server)


def unpause(
    what: KindOrName,
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Unpause a paused VM's instance (`unpause vm|vmi NAME`)."""
    named = _vm_or_vmi(what, name, "unpause")
    lifecycle(c.UnpauseVM(name=named, namespace=namespace, actor=actor()), server)


def reset(
    what: KindOrName,
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Reset a running VM's instance, as its reset button does (`reset vm|vmi NAME`)."""
    named = _vm_or_vmi(what, name, "reset")
    lifecycle(c.ResetVM(name=named, namespace=namespace, actor=actor()), server)


def rename(
    name: NameArg,
    new_name: Annotated[str, typer.Argument(help="the VM's new name")],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Give a stopped VM another name (virtctl rename); its history stays under the old one."""
    lifecycle(c.RenameVM(name=name, namespace=namespace, new_name=new_name, actor=actor()),
               server)  # fmt: skip


def undelete(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Bring a deleted VM back, stopped, with its disks."""
    lifecycle(c.UndeleteVM(name=name, namespace=namespace, actor=actor()), server)


class DiskType(StrEnum):
    disk = "disk"
    lun = "lun"


VolumeNameOpt = Annotated[
    str, typer.Option("--volume-name", help="the volume: a PersistentVolumeClaim of that name")
]
PersistOpt = Annotated[
    bool, typer.Option("--persist", help="change the VM spec too, not only the running VMI")
]


def addvolume(
    name: NameArg,
    volume_name: VolumeNameOpt,
    disk_type: Annotated[DiskType, typer.Option("--disk-type")] = DiskType.disk,
    serial: Annotated[str | None, typer.Option("--serial", help="the disk's serial")] = None,
    persist: PersistOpt = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Hotplug a PVC into a running VM as a disk on the scsi bus (virtctl addvolume)."""
    volume = {"name": volume_name, "persistentVolumeClaim": {"claimName": volume_name}}
    disk: dict[str, Any] = {"name": volume_name, disk_type.value: {"bus": "scsi"}}
    if serial:
        disk["serial"] = serial
    cmd = c.AddVolume(name=name, namespace=namespace, volume=volume, disk=disk, persist=persist,
                      actor=actor())  # fmt: skip
    lifecycle(cmd, server)


def removevolume(
    name: NameArg,
    volume_name: VolumeNameOpt,
    persist: PersistOpt = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Unplug a hotplugged volume from a VM (virtctl removevolume)."""
    cmd = c.RemoveVolume(name=name, namespace=namespace, volume=volume_name, persist=persist,
                         actor=actor())  # fmt: skip
    lifecycle(cmd, server)


def scale(
    what: Annotated[str, typer.Argument(help="vmirs or vmpool (or TYPE/NAME, or a vmirs's name)")],
    name: Annotated[str | None, typer.Argument(help="its name")] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=0, max=10_000)] = -1,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Set the number of replicas of a VMI replica set or a VM pool (kubectl scale)."""
    if replicas < 0:
        raise usage("Missing option '--replicas'.")
    try:
        kind, named = k.split(what, name) if name is not None or "/" in what else (k.VMIRS, what)
    except ValidationError as err:
        raise usage(err.message) from None
    if kind not in (k.VMIRS, k.VMPOOL) or named is None:
        raise usage(f"scale: {what!r}: virtbus scales vmirs and vmpool")
    scaled = c.ScaleVMPool if kind is k.VMPOOL else c.ScaleReplicaSet
    lifecycle(scaled(name=named, namespace=namespace, replicas=replicas, actor=actor()), server)


def version(
    client: Annotated[bool, typer.Option("--client", help="only this CLI's version")] = False,
    server: ServerOpt = None,
) -> None:
    """Print the client's and the server's (virtbus-api's) versions, like virtctl version."""
    from virtctl.verbs import version as version_

    finish(run(version_(server_url(server), client_only=client)))


def register(app: typer.Typer) -> None:
    """Add these verbs to the `virtbus` app, in `--help`'s order."""
    verbs = (schema, apply, start, stop, restart, pause, unpause, reset, rename, undelete,
             addvolume, removevolume, scale, version)  # fmt: skip
    for verb in verbs:
        app.command()(verb)
