"""kubectl's object verbs over the bus: `create -f`, `delete KIND NAME | -f FILE`.

`apply` (in `verbs.py`) creates or updates; these are its stricter and its opposite siblings, as
KubeVirt users script them: `create` refuses what exists (AlreadyExists, judged by the
orchestrator in the same step that would create it, so two creates cannot both win), and `delete`
takes every kind and the objects a manifest names. `patch` and `edit` are in `editing.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import typer

from bus.client import Rejected, query, send, session
from events import commands as c
from events.errors import ValidationError, VirtbusError
from events.manifest import parse_documents
from events.names import check_name
from events.protocol import Query
from virtctl import kinds as k
from virtctl.getting import VMI_SOURCE, is_vm
from virtctl.verbs import (
    err,
    instancetype_object_name,
    manifest_commands,
    read_manifest,
    volume_object_name,
)

_WRITTEN = {"ApplyVM": "virtualmachine", "ApplyReplicaSet": "virtualmachineinstancereplicaset",
            "ApplyVMPool": "virtualmachinepool", "ApplyKubeVirt": "kubevirt",
            "MigrateVM": "virtualmachineinstancemigration", "SnapshotVM": "virtualmachinesnapshot",
            "RestoreVM": "virtualmachinerestore"}  # fmt: skip


def _created_name(cmd: c.Command) -> str:
    if isinstance(cmd, c.CreateVolume):
        return volume_object_name(cmd)
    if isinstance(cmd, c.ApplyInstancetype | c.ApplyDataSource):
        return instancetype_object_name(cmd)
    if isinstance(cmd, c.ApplyVM) and cmd.source_kind == VMI_SOURCE:
        return f"virtualmachineinstance.kubevirt.io/{cmd.name}"
    group = "snapshot.kubevirt.io" if isinstance(cmd, c.SnapshotVM | c.RestoreVM) else (
        "pool.kubevirt.io" if isinstance(cmd, c.ApplyVMPool) else "kubevirt.io")  # fmt: skip
    name = {c.MigrateVM: lambda x: x.migration or x.name, c.SnapshotVM: lambda x: x.snapshot,
            c.RestoreVM: lambda x: x.restore}.get(type(cmd), lambda x: x.name)(cmd)  # fmt: skip
    return f"{_WRITTEN[type(cmd).__name__]}.{group}/{name}"


async def create_file(url: str, *, path: str, namespace: str, kustomize: bool = False) -> int:
    """`kubectl create -f` (`-k`): every object is new, or refused as AlreadyExists."""
    given, failed = await manifest_commands(path, namespace=namespace, verb="create",
                                            kustomize=kustomize)  # fmt: skip
    async with session(url) as nc:
        for one in given:
            cmd = one
            if isinstance(one, c.ApplyVM | c.ApplyReplicaSet | c.ApplyInstancetype
                          | c.ApplyDataSource):  # fmt: skip
                cmd = msgspec.structs.replace(one, create_only=True)
            elif isinstance(one, c.CreateVolume):
                cmd = msgspec.structs.replace(one, apply=False)
            try:
                await send(nc, cmd)
            except Rejected as e:
                kind = "AlreadyExists" if e.message.endswith("already exists") else "Invalid"
                err(f'Error from server ({kind}): error when creating "{path}": {e.message}')
                failed += 1
                continue
            typer.echo(f"{_created_name(cmd)} created")
    return 1 if failed else 0


# --- delete -----------------------------------------------------------------------------------


async def delete(url: str, *, kind: k.Kind, name: str, namespace: str, actor: str) -> int:
    async with session(url) as nc:
        typer.echo(await _delete(nc, kind=kind, name=name, namespace=namespace, actor=actor))
    return 0


async def delete_file(
    url: str, *, path: str, namespace: str, actor: str, kustomize: bool = False
) -> int:
    """`kubectl delete -f` (`-k`): the objects the manifest names, each by its kind and name."""
    text = await asyncio.to_thread(read_manifest, path, kustomize=kustomize)
    docs = parse_documents(text)
    if not docs:
        raise ValidationError("no objects passed to delete", field="filename")
    failed = 0
    async with session(url) as nc:
        for i, doc in enumerate(docs):
            try:
                kind = k.of_manifest(str(doc.get("kind")))
                meta = doc.get("metadata")
                meta = meta if isinstance(meta, dict) else {}
                name = check_name(meta.get("name") or "", field=f"documents[{i}].metadata.name")
                ns = check_name(meta.get("namespace") or namespace, field="metadata.namespace")
                typer.echo(await _delete(nc, kind=kind, name=name, namespace=ns, actor=actor))
            except VirtbusError as e:
                err(f"error: {e.message}")
                failed += 1
    return 1 if failed else 0


async def _delete(nc: Any, *, kind: k.Kind, name: str, namespace: str, actor: str) -> str:
    """Delete one object; the line kubectl prints for it."""
    check_name(name, field="name")
    done = f'{kind.singular}.{kind.group} "{name}" deleted' if kind.group else (
        f'{kind.singular} "{name}" deleted')  # fmt: skip
    match kind:
        case k.VM | k.VMI:
            s = next(iter((await query(nc, Query(what="vms", namespace=namespace,
                                                 name=name))).vms), None)  # fmt: skip
            if (
                s is None
                or not s.exists
                or (kind is k.VM and not is_vm(s))
                or (kind is k.VMI and not s.phase and s.source_kind != VMI_SOURCE)
            ):
                raise VirtbusError(kind.not_found(name))
            cmd: c.Command = c.DeleteVM(name=name, namespace=namespace, actor=actor)
            if kind is k.VMI and s.source_kind != VMI_SOURCE:
                # A VM's (or replica set's) VMI: its owner decides what follows, as in KubeVirt:
                # Always and RerunOnFailure start a new one, the others leave it stopped.
                again = s.run_strategy in ("Always", "RerunOnFailure")
                cmd = (c.RestartVM if again else c.StopVM)(name=name, namespace=namespace,
                                                          actor=actor)  # fmt: skip
            await send(nc, cmd)
        case k.INSTANCETYPE | k.CLUSTER_INSTANCETYPE | k.PREFERENCE | k.CLUSTER_PREFERENCE:
            from virtctl.instancetypes import DELETE

            await send(nc, DELETE[kind.kind](name=name, namespace=namespace, actor=actor))
        case k.SERVICE:
            await send(nc, c.DeleteService(name=name, namespace=namespace, actor=actor))
        case k.MIGRATION_POLICY:
            await send(nc, c.DeleteMigrationPolicy(name=name, actor=actor))
        case k.DATASOURCE:
            await send(nc, c.DeleteDataSource(name=name, namespace=namespace, actor=actor))
        case k.VMIRS:
            await send(nc, c.DeleteReplicaSet(name=name, namespace=namespace, actor=actor))
        case k.VMPOOL:
            await send(nc, c.DeleteVMPool(name=name, namespace=namespace, actor=actor))
        case k.PVC | k.DV:
            if kind is k.DV:
                from virtctl.volumes import volume

                if not (await volume(nc, name, namespace)).data_volume:
                    raise VirtbusError(kind.not_found(name))
            await send(nc, c.DeleteVolume(name=name, namespace=namespace, actor=actor))
        case k.SNAPSHOT:
            from virtctl.snapshots import delete_snapshot_on

            await delete_snapshot_on(nc, snapshot=name, namespace=namespace, actor=actor)
        case k.VMIM:
            from virtctl.getting import listing

            found = (await listing(nc, kind, name=name, namespace=namespace)).items
            if not found:
                raise VirtbusError(kind.not_found(name))
            phase = found[-1].obj["status"]["phase"]
            if phase in ("Succeeded", "Failed"):
                raise VirtbusError(f'{kind.resource} "{name}" is {phase}: virtbus keeps every '
                                   "migration in its VM's history; only one in progress can be "
                                   "deleted (which cancels it)")  # fmt: skip
            vm = found[-1].obj["spec"]["vmiName"]
            await send(nc, c.CancelMigration(name=vm, namespace=namespace, actor=actor))
        case _:
            why = {k.NODE: "a node is its worker: stop the worker, or `virtbus drain` it",
                   k.RESTORE: "a restore stays in its VM's history",
                   k.KUBEVIRT: "it would uninstall KubeVirt; apply it again to change the "
                               "configuration",
                   k.REVISION: "a VM's captured instance type or preference goes with its VM"
                   }.get(kind, "it is not a kind virtbus deletes")  # fmt: skip
            raise VirtbusError(f"deleting {kind.resource} is not supported by virtbus: {why}")
    return done


# --- patch ------------------------------------------------------------------------------------
