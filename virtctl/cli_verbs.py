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
from events.errors import VirtbusError
from virtctl.cli_common import (
    NameArg,
    NsOpt,
    ServerOpt,
    actor,
    finish,
    lifecycle,
    optional_name,
    run,
    usage,
)
from virtctl.snapshots import SNAPSHOT_KINDS, delete_snapshot


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
        str, typer.Option("--filename", "-f", help="manifest file, or - for stdin")
    ],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Create or update VMs from KubeVirt manifests (multi-document YAML)."""
    from virtctl.verbs import apply_file

    finish(run(apply_file(server_url(server), path=filename, namespace=namespace)))


def start(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Start a VM."""
    lifecycle(c.StartVM(name=name, namespace=namespace, actor=actor()), server)


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


def restart(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Restart a running VM."""
    lifecycle(c.RestartVM(name=name, namespace=namespace, actor=actor()), server)


def pause(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Pause a running VM."""
    lifecycle(c.PauseVM(name=name, namespace=namespace, actor=actor()), server)


def unpause(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Unpause a paused VM."""
    lifecycle(c.UnpauseVM(name=name, namespace=namespace, actor=actor()), server)


def delete(
    what: Annotated[str, typer.Argument(help="a VM name, or a kind: vm NAME, vmsnapshot NAME")],
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Delete a VM (its disks are kept, see `undelete`) or a VM snapshot (`delete vmsnapshot S`)."""
    if name is None:
        what, name = "vm", what
    if what.lower() in SNAPSHOT_KINDS:
        finish(
            run(
                delete_snapshot(
                    server_url(server), snapshot=name, namespace=namespace, actor=actor()
                )
            )
        )
        return
    if what.lower() not in ("vm", "vms", "virtualmachine", "virtualmachines"):
        raise usage(f"delete {what}: use a VM name, vm NAME or vmsnapshot NAME")
    lifecycle(c.DeleteVM(name=name, namespace=namespace, actor=actor()), server)


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
    name: Annotated[str, typer.Argument(help="VirtualMachineInstanceReplicaSet name")],
    replicas: Annotated[int, typer.Option("--replicas", min=0, max=10_000)],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Set the number of replicas of a VMI replica set."""
    cmd = c.ScaleReplicaSet(name=name, namespace=namespace, replicas=replicas, actor=actor())
    lifecycle(cmd, server)


def get(
    kind: Annotated[
        str, typer.Argument(help="vms, vmis, nodes, vmirs, migrations, vmsnapshots, vmrestores")
    ],
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    output: Annotated[str, typer.Option("-o", "--output", help="wide, json or yaml")] = "",
    watch: Annotated[bool, typer.Option("--watch", "-w")] = False,
    server: ServerOpt = None,
) -> None:
    """List VMs, VMIs, nodes, replica sets or migrations like kubectl."""
    from virtctl.verbs import get as get_

    if output not in ("", "wide", "json", "yaml"):
        raise usage(f"-o {output!r}: use wide, json or yaml")
    ns = None if all_namespaces else namespace
    finish(run(get_(server_url(server), what=kind, name=optional_name(name), namespace=ns,
                      output=output, watch=watch)))  # fmt: skip


def describe(
    kind: Annotated[str, typer.Argument(help="vm")],
    name: NameArg,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Show a VM's state, conditions and latest events."""
    from virtctl.verbs import describe as describe_

    if kind not in ("vm", "vms", "virtualmachine"):
        raise usage(f"describe {kind}: only vm is supported")
    finish(run(describe_(server_url(server), name=name, namespace=namespace)))


def wait(
    kind: Annotated[str, typer.Argument(help="vm")],
    name: NameArg,
    for_: Annotated[str, typer.Option("--for", help="status=Running, condition=Ready, delete")],
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="seconds")] = 30.0,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Wait until a VM reaches a status or condition."""
    from virtctl.verbs import matcher
    from virtctl.verbs import wait as wait_

    if kind not in ("vm", "vms", "virtualmachine"):
        raise usage(f"wait {kind}: only vm is supported")
    try:
        matcher(for_)
    except VirtbusError as err:
        raise usage(str(err)) from None
    coro = wait_(server_url(server), name=name, namespace=namespace, condition=for_,
                 timeout_s=timeout)  # fmt: skip
    finish(run(coro))


def register(app: typer.Typer) -> None:
    """Add these verbs to the `virtbus` app, in `--help`'s order."""
    verbs = (schema, apply, start, stop, restart, pause, unpause, delete, rename, undelete,
             addvolume, removevolume, scale, get, describe, wait)  # fmt: skip
    for verb in verbs:
        app.command()(verb)
