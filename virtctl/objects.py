"""kubectl's object verbs over the bus: `create -f`, `delete KIND NAME | -f FILE`, `patch`.

`apply` (in `verbs.py`) creates or updates; these are its stricter and its opposite siblings, as
KubeVirt users script them: `create` refuses what exists (AlreadyExists, judged by the
orchestrator in the same step that would create it, so two creates cannot both win), `delete`
takes every kind and the objects a manifest names, and `patch` changes the live object with a
JSON merge patch or a JSON patch, then records the result as an apply of the whole object (retried
on a conflict, since the object may change between the read and the write, as kubectl does).
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import msgspec
import typer

from bus.client import Rejected, query, send, session
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events.errors import ValidationError, VirtbusError
from events.manifest import parse_documents, to_commands
from events.names import Ref, check_name
from events.protocol import Query
from events.replicasets import ReplicaSetState, apply_rs
from virtctl import kinds as k
from virtctl.getting import VMI_SOURCE, is_vm
from virtctl.patching import apply_patch
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
_CONFLICT_TRIES = 5


def _created_name(cmd: c.Command) -> str:
    if isinstance(cmd, c.CreateVolume):
        return volume_object_name(cmd)
    if isinstance(cmd, c.ApplyInstancetype):
        return instancetype_object_name(cmd)
    if isinstance(cmd, c.ApplyVM) and cmd.source_kind == VMI_SOURCE:
        return f"virtualmachineinstance.kubevirt.io/{cmd.name}"
    group = "snapshot.kubevirt.io" if isinstance(cmd, c.SnapshotVM | c.RestoreVM) else (
        "pool.kubevirt.io" if isinstance(cmd, c.ApplyVMPool) else "kubevirt.io")  # fmt: skip
    name = {c.MigrateVM: lambda x: x.migration or x.name, c.SnapshotVM: lambda x: x.snapshot,
            c.RestoreVM: lambda x: x.restore}.get(type(cmd), lambda x: x.name)(cmd)  # fmt: skip
    return f"{_WRITTEN[type(cmd).__name__]}.{group}/{name}"


async def create_file(url: str, *, path: str, namespace: str) -> int:
    """`kubectl create -f`: every object is new, or refused as AlreadyExists."""
    given, failed = await manifest_commands(path, namespace=namespace, verb="create")
    async with session(url) as nc:
        for one in given:
            cmd = one
            if isinstance(one, c.ApplyVM | c.ApplyReplicaSet | c.ApplyInstancetype):
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


async def delete_file(url: str, *, path: str, namespace: str, actor: str) -> int:
    """`kubectl delete -f`: the objects the manifest names, each by its kind and name."""
    docs = parse_documents(await asyncio.to_thread(read_manifest, path))
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
                               "configuration"}[kind]  # fmt: skip
            raise VirtbusError(f"deleting {kind.resource} is not supported by virtbus: {why}")
    return done


# --- patch ------------------------------------------------------------------------------------


async def patch(url: str, *, kind: k.Kind, name: str, namespace: str, kind_of_patch: str,
                patch_text: str, actor: str) -> int:  # fmt: skip
    """`kubectl patch --type merge|json`: the live object patched, then applied whole."""
    if kind_of_patch == "strategic":  # refused before anything is read, as the server would
        apply_patch({}, {}, kind_of_patch=kind_of_patch)
    try:
        body = json.loads(patch_text)
    except ValueError as e:
        raise ValidationError(f"--patch: not JSON: {e}", field="patch") from None
    if kind not in (k.VM, k.VMIRS, k.KUBEVIRT, *k.INSTANCETYPES):
        instead = ("patch the virtualmachine or virtualmachineinstancereplicaset that owns it"
                   if kind is k.VMI else "apply its manifest again")  # fmt: skip
        raise VirtbusError(f"patching {kind.resource} is not supported by virtbus: {instead}")
    async with session(url) as nc:
        for _ in range(_CONFLICT_TRIES):
            doc, version = await (
                _live(nc, kind=kind, name=name, namespace=namespace)
                if kind in (k.VM, k.VMIRS)
                else _listed(nc, kind=kind, name=name, namespace=namespace)
            )
            patched = apply_patch(copy.deepcopy(doc), body, kind_of_patch=kind_of_patch)
            if not isinstance(patched, dict):
                raise ValidationError("the patched object is not an object", field="patch")
            for key in ("apiVersion", "kind"):
                if patched.get(key) != doc[key]:
                    raise ValidationError(f"{key}: a patch cannot change it", field=key)
            meta = patched.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            where = doc["metadata"]
            if (meta.get("name"), meta.get("namespace")) != (name, where.get("namespace")):
                raise ValidationError("metadata.name: a patch cannot rename", field="metadata.name")
            ns = str(where.get("namespace") or namespace)
            patched.pop("status", None)
            cmds, warnings = to_commands(patched, default_namespace=ns)
            for w in warnings:
                err(f"Warning: {w.removeprefix('warning: ')}")
            cmd = msgspec.structs.replace(cmds[-1], expected_version=version, actor=actor)
            try:
                outcome = await send(nc, cmd)
            except Rejected as e:
                if e.message.startswith("Operation cannot be fulfilled"):
                    continue  # changed meanwhile: read it again and patch the new version
                raise
            change = "" if outcome.events else " (no change)"
            typer.echo(f"{kind.object_name(name)} patched{change}")
            return 0
    raise VirtbusError(f"{kind.object_name(name)}: it kept changing while being patched; "
                       "try again")  # fmt: skip


async def _listed(
    nc: Any, *, kind: k.Kind, name: str, namespace: str
) -> tuple[dict[str, Any], int]:
    """The KubeVirt object or an instance type (preference) as `get -o json` shows it, as a
    manifest, and its version. The KubeVirt object is found by name in any namespace: there is
    one per cluster (before any apply, the default the configuration runs by)."""
    from virtctl.getting import listing

    found = await listing(nc, kind, name=name, namespace=None if kind is k.KUBEVIRT else namespace)
    obj = next((i.obj for i in found.items if i.name == name), None)
    if obj is None:
        raise VirtbusError(kind.not_found(name))
    live = obj["metadata"]
    meta = {key: live[key] for key in ("name", "namespace", "labels") if live.get(key)}
    doc = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta,
           "spec": copy.deepcopy(obj["spec"])}  # fmt: skip
    return doc, int(live.get("resourceVersion") or 0)


async def _live(nc: Any, *, kind: k.Kind, name: str, namespace: str) -> tuple[dict[str, Any], int]:
    """The object as a manifest (apiVersion, kind, metadata, spec) and its version, from the log."""
    store = EventStore(nc)
    if kind is k.VMIRS:
        rs = ReplicaSetState()
        for r in await store.read(Ref("rs", namespace, name)):
            rs = apply_rs(rs, r.envelope)
        if not rs.exists:
            raise VirtbusError(kind.not_found(name))
        labels, spec, version = rs.labels, rs.spec, rs.version
    else:
        s, _ = await VMRepository(store).get(Ref.vm(name, namespace))
        if not s.exists or not is_vm(s):
            raise VirtbusError(kind.not_found(name))
        labels, spec, version = s.labels, s.spec, s.version
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "kubevirt.io/v1", "kind": kind.kind, "metadata": meta,
            "spec": copy.deepcopy(spec)}, version  # fmt: skip
