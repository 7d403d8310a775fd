"""What the CLI verbs do, over the bus: apply, lifecycle, get (and -w), describe, wait.

Output follows kubectl and virtctl: the same phrases ("virtualmachine.kubevirt.io/x created",
"VM x was scheduled to start"), tables with their columns, `-o json|yaml` shaped like their objects.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import typer

from bus.client import Rejected, query, send, session
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events import model as m
from events import render
from events.envelope import Recorded
from events.errors import ValidationError, VirtbusError
from events.manifest import parse_documents, to_commands
from events.names import Ref, aggregate_key
from events.nodes import NodeState, apply_node
from events.protocol import Query
from events.replicasets import OWNER_LABEL, ReplicaSetState, apply_rs
from events.state import VMState, apply
from virtctl.snapshots import RESTORE_KINDS, SNAPSHOT_KINDS, get_snapshots

KIND_NAMES = {
    "vmirs": "vmirs", "virtualmachineinstancereplicaset": "vmirs",
    "virtualmachineinstancereplicasets": "vmirs",
    "vm": "vms", "vms": "vms", "virtualmachine": "vms", "virtualmachines": "vms",
    "vmi": "vmis", "vmis": "vmis", "virtualmachineinstance": "vmis",
    "virtualmachineinstances": "vmis", "node": "nodes", "nodes": "nodes",
    "vmim": "vmims", "vmims": "vmims", "migration": "vmims", "migrations": "vmims",
    "virtualmachineinstancemigration": "vmims", "virtualmachineinstancemigrations": "vmims",
}  # fmt: skip
RESOURCES = {
    "vms": "virtualmachines.kubevirt.io", "vmis": "virtualmachineinstances.kubevirt.io",
    "nodes": "nodes",
}  # fmt: skip
APPLIED_KIND = {
    "ApplyVM": "virtualmachine", "ApplyReplicaSet": "virtualmachineinstancereplicaset",
    "MigrateVM": "virtualmachineinstancemigration",
    "SnapshotVM": "virtualmachinesnapshot", "RestoreVM": "virtualmachinerestore",
}  # fmt: skip
DONE = {
    "StartVM": "VM {} was scheduled to start", "StopVM": "VM {} was scheduled to stop",
    "RestartVM": "VM {} was scheduled to restart", "PauseVM": "VMI {} was scheduled to pause",
    "UnpauseVM": "VMI {} was scheduled to unpause",
    "DeleteVM": 'virtualmachine.kubevirt.io "{}" deleted',
    "UndeleteVM": "VM {} was restored; it is stopped, start it with `virtbus start {}`",
    "MigrateVM": "VM {} was scheduled to migrate",
    "RenameVM": "VM {} was renamed to {}",
    "CancelMigration": "VM {} was scheduled to cancel its migration",
    "DrainNode": "node/{} drained", "UncordonNode": "node/{} uncordoned",
    "ScaleReplicaSet": "virtualmachineinstancereplicaset.kubevirt.io/{} scaled",
    "AddVolume": "Successfully submitted add volume request to VM {} for volume {}",
    "RemoveVolume": "Successfully submitted remove volume request to VM {} for volume {}",
}  # fmt: skip


def err(text: str) -> None:
    typer.echo(text, err=True)


def read_manifest(path: str) -> str:
    """The text of `-f PATH` (`-` is stdin), or a ValidationError that names the file."""
    shown = "stdin" if path == "-" else f'the path "{path}"'
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise ValidationError(f"{shown} does not exist", field="filename") from None
    except IsADirectoryError:
        raise ValidationError(f"{shown} is a directory; give a manifest file",
                              field="filename") from None  # fmt: skip
    except OSError as e:
        raise ValidationError(f"{shown} cannot be read: {e.strerror or e}",
                              field="filename") from None  # fmt: skip
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise ValidationError(f"{shown} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                              f"{e.start})", field="filename") from None  # fmt: skip


async def apply_file(url: str, *, path: str, namespace: str) -> int:
    # Read and parse before connecting: a bad file is reported without a bus.
    docs = parse_documents(await asyncio.to_thread(read_manifest, path))
    if not docs:  # kubectl's words for an empty file, or one of only comments and `---`
        raise ValidationError("no objects passed to apply", field="filename")
    failed = 0
    async with session(url) as nc:
        for doc in docs:
            try:
                cmds, warnings = to_commands(doc, default_namespace=namespace)
            except ValidationError as e:
                err(f"error: {e.message}")
                failed += 1
                continue
            for w in warnings:
                err(f"Warning: {w.removeprefix('warning: ')}")
            for cmd in cmds:
                try:
                    outcome = await send(nc, cmd)
                except Rejected as e:
                    err(f"error: {cmd.name}: {e.message}")
                    failed += 1
                    continue
                typer.echo(_applied(cmd, outcome))
    return 1 if failed else 0


def _applied(cmd: c.Command, outcome: c.Outcome) -> str:
    kind = APPLIED_KIND.get(type(cmd).__name__, "object")
    if isinstance(cmd, c.MigrateVM):  # the object is the migration, named by the manifest
        verb = "created" if outcome.events else "unchanged"
        return f"{kind}.kubevirt.io/{cmd.migration or cmd.name} {verb}"
    if isinstance(cmd, c.ApplyVM) and cmd.source_kind == "VirtualMachineInstance":
        kind = "virtualmachineinstance"
    verb = "unchanged"
    if "io.virtbus.vm.created.v1" in outcome.events:
        verb = "created"
    elif outcome.events:
        verb = "configured"
    if isinstance(cmd, c.SnapshotVM | c.RestoreVM):  # named for themselves, not for the VM
        name = cmd.snapshot if isinstance(cmd, c.SnapshotVM) else cmd.restore
        return f"{kind}.snapshot.kubevirt.io/{name} created"
    return f"{kind}.kubevirt.io/{cmd.name} {verb}"


async def lifecycle(url: str, cmd: c.Command) -> int:
    async with session(url) as nc:
        await send(nc, cmd)
    detail = cmd.name
    if isinstance(cmd, c.AddVolume):
        detail = str(cmd.volume.get("name", ""))
    elif isinstance(cmd, c.RemoveVolume):
        detail = cmd.volume
    elif isinstance(cmd, c.RenameVM):
        detail = cmd.new_name
    typer.echo(DONE[type(cmd).__name__].format(cmd.name, detail))
    return 0


async def get(
    url: str, *, what: str, name: str | None, namespace: str | None, output: str, watch: bool
) -> int:
    if what.lower() in (*SNAPSHOT_KINDS, *RESTORE_KINDS):
        return await get_snapshots(url, restores=what.lower() in RESTORE_KINDS, name=name,
                                   namespace=namespace, output=output)  # fmt: skip
    if what.lower() in ("pvc", "pvcs", "persistentvolumeclaim", "persistentvolumeclaims"):
        from virtctl.volumes import get as get_volumes

        return await get_volumes(url, name=name, namespace=namespace, output=output)
    kind = KIND_NAMES.get(what.lower())
    if kind is None:
        raise ValidationError(f'the server doesn\'t have a resource type "{what}"', field="kind")
    if kind == "vmirs":
        return await _get_replica_sets(url, name=name, namespace=namespace, output=output)
    if kind == "vmims":
        from virtctl.migrations import get_migrations

        return await get_migrations(url, name=name, namespace=namespace, output=output)
    async with session(url) as nc:
        q = Query(what="nodes" if kind == "nodes" else "vms", namespace=namespace, name=name)
        answer = await query(nc, q)
        # A named lookup returns deleted VMs too; a VM without a phase has no VMI.
        vms = [s for s in answer.vms if s.exists and (kind != "vmis" or not name or s.phase)]
        if kind == "nodes":  # the VMS column counts every namespace's VMs on each node
            vms = (await query(nc, Query(what="vms"))).vms
        nodes = [n for n in answer.nodes if name is None or n.name == name]
        if name and not (nodes if kind == "nodes" else vms):
            raise VirtbusError(f'{RESOURCES[kind]} "{name}" not found')
        text = _render(kind, vms, nodes, output=output, namespace=namespace,
                       single=name is not None)  # fmt: skip
        typer.echo(text.rstrip("\n"))
        if watch:
            await _watch(nc, kind=kind, name=name, namespace=namespace, output=output,
                         vms=vms, nodes=nodes, position=answer.position)  # fmt: skip
    return 0


async def _get_replica_sets(
    url: str, *, name: str | None, namespace: str | None, output: str
) -> int:
    """`kubectl get vmirs`: folded from the log's replica-set subjects (the read model holds
    VMs and nodes only), with replica counts from the VMs the sets own."""
    async with session(url) as nc:
        sets: dict[str, ReplicaSetState] = {}

        def on(rec: Recorded) -> None:
            key = aggregate_key(rec.subject)
            sets[key] = apply_rs(sets.get(key) or ReplicaSetState(), rec.envelope)

        await EventStore(nc).replay(on, subjects=["virt.rs.>"], verify=False)
        vms = (await query(nc, Query(what="vms", namespace=namespace))).vms
    found = [rs for rs in sets.values() if rs.exists and (namespace is None or
             rs.namespace == namespace) and (name is None or rs.name == name)]  # fmt: skip
    if name and not found:
        raise VirtbusError(f'virtualmachineinstancereplicasets.kubevirt.io "{name}" not found')
    rows = []
    for rs in sorted(found, key=lambda r: (r.namespace, r.name)):
        owned = [s for s in vms if s.labels.get(OWNER_LABEL) == rs.name and s.exists]
        ready = sum(1 for s in owned if s.ready)
        rows.append((rs, [rs.name, str(rs.replicas), str(len(owned)), str(ready),
                          render.age(rs.created)]))  # fmt: skip
    if output in ("json", "yaml"):
        objs = [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
                 "metadata": {"name": rs.name, "namespace": rs.namespace, "labels": rs.labels},
                 "spec": rs.spec, "status": {"replicas": int(c[2]), "readyReplicas": int(c[3])}}
                for rs, c in rows]  # fmt: skip
        doc = objs[0] if name and objs else render.as_list(objs)
        typer.echo((render.to_json(doc) if output == "json" else render.to_yaml(doc)).rstrip())
        return 0
    header = ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    if not rows:
        typer.echo(render.no_resources(namespace).rstrip())
    elif namespace is None:
        typer.echo(render.table(["NAMESPACE", *header], ([r.namespace, *c] for r, c in rows)))
    else:
        typer.echo(render.table(header, (c for _, c in rows)).rstrip())
    return 0


def _render(
    kind: str, vms: list[VMState], nodes: list[NodeState], *, output: str,
    namespace: str | None, header: bool = True, single: bool = False,
) -> str:  # fmt: skip
    if output in ("json", "yaml"):
        objs: list[dict[str, object]]
        if kind == "nodes":
            counts = _vm_counts(vms)
            objs = [render.node_object(n, vms=counts.get(n.name, 0)) for n in nodes]
        elif kind == "vmis":
            objs = [o for s in vms if (o := render.vmi_object(s)) is not None]
        else:
            objs = [render.vm_object(s) for s in vms]
        # Like kubectl: a named object (or a watch update) is printed bare, a listing as a List.
        doc = objs[0] if len(objs) == 1 and (single or not header) else render.as_list(objs)
        return render.to_json(doc) if output == "json" else render.to_yaml(doc)
    wide = output == "wide"
    if kind == "nodes":
        text = render.node_table(nodes, _vm_counts(vms), wide=wide)
    elif kind == "vmis":
        text = render.vmi_table(vms, wide=wide, namespace=namespace)
    else:
        text = render.vm_table(vms, wide=wide, namespace=namespace)
    if header or text.startswith("No resources"):
        return text
    return "\n".join(text.splitlines()[1:])


def _vm_counts(vms: list[VMState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in vms:
        if s.node:
            counts[s.node] = counts.get(s.node, 0) + 1
    return counts


async def _watch(
    nc: object, *, kind: str, name: str | None, namespace: str | None, output: str,
    vms: list[VMState], nodes: list[NodeState], position: int,
) -> None:  # fmt: skip
    store = EventStore(nc)  # type: ignore[arg-type]
    states = {f"{s.namespace}/{s.name}": s for s in vms}
    node_states = {n.name: n for n in nodes}
    async for rec in store.follow(from_seq=position + 1):
        ref = rec.subject.split(".")
        if ref[1] == "vm" and kind != "nodes":
            key = f"{ref[2]}/{ref[3]}"
            if (name and ref[3] != name) or (namespace and ref[2] != namespace):
                continue
            before = states.get(key)
            if before is None:
                before = (await VMRepository(store).get(Ref("vm", ref[2], ref[3])))[0]
                if before.version >= rec.envelope.version:
                    states[key] = before
                    continue
            states[key] = apply(before, rec.envelope)
            typer.echo(_render(kind, [states[key]], [], output=output, namespace=namespace,
                               header=False))  # fmt: skip
        elif ref[1] == "node" and kind == "nodes" and (name is None or ref[3] == name):
            n = apply_node(node_states.get(ref[3]) or NodeState(), rec.envelope)
            node_states[ref[3]] = n
            typer.echo(_render(kind, list(states.values()), [n], output=output,
                               namespace=namespace, header=False))  # fmt: skip


async def describe(url: str, *, name: str, namespace: str) -> int:
    async with session(url) as nc:
        answer = await query(nc, Query(what="vms", namespace=namespace, name=name))
        if not answer.vms:
            raise VirtbusError(f'virtualmachines.kubevirt.io "{name}" not found')
        s = answer.vms[0]
        history = await EventStore(nc).read(Ref.vm(name, namespace))
    now = datetime.now(UTC)
    lines = [
        f"Name:           {s.name}", f"Namespace:      {s.namespace}",
        f"Labels:         {render._labels(s.labels)}",
        f"Created:        {render.timestamp(s.created)}",
        f"Run Strategy:   {s.run_strategy}", f"Status:         {s.status}",
        f"Ready:          {s.ready}", f"Phase:          {s.phase or '<none>'}",
        f"Node:           {s.node or '<none>'}", f"Version:        {s.version}", "Conditions:",
    ]  # fmt: skip
    for cond in render._conditions(s):
        detail = f"{cond.get('reason', '')} {cond.get('message', '')}".strip()
        lines.append(f"  {cond['type']:<16} {cond['status']:<6} {detail}")
    lines.append("Events:")
    lines.append(f"  {'Age':<8} {'Type':<40} {'From':<32} Message")
    for r in history[-20:]:
        e = r.envelope
        lines.append(
            f"  {render.age(e.time, now):<8} {e.type.removeprefix('io.virtbus.'):<40} "
            f"{e.source.removeprefix('/virtbus/'):<32} {_message(e.data)}"
        )
    typer.echo("\n".join(lines))
    return 0


def _message(e: m.Event) -> str:
    parts = []
    for f in e.__struct_fields__:
        v = getattr(e, f)
        if f != "spec" and v not in ("", None, [], {}):
            parts.append(f"{f}={v}")
    return ", ".join(parts)


def matcher(condition: str) -> Callable[[VMState], bool]:
    """`status=Running`, `phase=Running`, `condition=Ready`, `delete` (kubectl wait's forms)."""
    key, _, value = condition.partition("=")
    if key == "status" and value:
        return lambda s: s.status == value
    if key == "phase" and value:
        return lambda s: s.phase == value
    if key == "condition" and value:
        wanted = value.lower()
        return lambda s: any(
            c["type"].lower() == wanted and c["status"] == "True" for c in render._conditions(s)
        )
    if key == "delete":
        return lambda s: s.deleted or not s.exists
    raise ValidationError(
        f"--for: {condition!r} is not understood; use status=X, phase=X, condition=X or delete",
        field="for",
    )


async def wait(url: str, *, name: str, namespace: str, condition: str, timeout_s: float) -> int:
    ok = matcher(condition)
    async with session(url) as nc:
        store = EventStore(nc)
        ref = Ref.vm(name, namespace)
        try:
            async with asyncio.timeout(timeout_s):
                s, _ = await VMRepository(store).get(ref)
                position = (await store.head(ref)).seq
                if not ok(s):
                    async for rec in store.follow(from_seq=position + 1):
                        if rec.subject.startswith(ref.prefix + "."):
                            s = apply(s, rec.envelope)
                            if ok(s):
                                break
        except TimeoutError:
            err(f"error: timed out waiting for the condition on virtualmachines/{name}")
            return 1
    typer.echo(f"virtualmachine.kubevirt.io/{name} condition met")
    return 0
