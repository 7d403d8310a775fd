"""What the CLI verbs do, over the bus: apply, lifecycle, get (and -w), describe, wait.

Output follows kubectl and virtctl: the same phrases ("virtualmachine.kubevirt.io/x created",
"VM x was scheduled to start"), tables with their columns, `-o json|yaml` shaped like their objects.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import typer

from bus.client import Rejected, query, send, session
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events import model as m
from events import render
from events.errors import ValidationError, VirtbusError
from events.manifest import parse_documents, to_commands
from events.model import CE_TYPE
from events.names import Ref
from events.nodes import NodeState, apply_node
from events.protocol import Query
from events.state import VMState, apply
from virtctl import getting
from virtctl.kinds import NODE, VM, VMI, Kind
from virtctl.listing import Output
from virtctl.selector import Selector

APPLIED_KIND = {
    "ApplyVM": "virtualmachine", "ApplyReplicaSet": "virtualmachineinstancereplicaset",
    "MigrateVM": "virtualmachineinstancemigration",
    "SnapshotVM": "virtualmachinesnapshot", "RestoreVM": "virtualmachinerestore",
    "ApplyVMPool": "virtualmachinepool", "ApplyKubeVirt": "kubevirt",
}  # fmt: skip
DONE = {
    "StartVM": "VM {} was scheduled to start", "StopVM": "VM {} was scheduled to stop",
    "RestartVM": "VM {} was scheduled to restart", "PauseVM": "VMI {} was scheduled to pause",
    "UnpauseVM": "VMI {} was scheduled to unpause", "ResetVM": "VMI {} was scheduled to reset",
    "SoftRebootVM": "VMI {} was scheduled to soft reboot",
    "DeleteVM": 'virtualmachine.kubevirt.io "{}" deleted',
    "UndeleteVM": "VM {} was restored; it is stopped, start it with `virtbus start {}`",
    "MigrateVM": "VM {} was scheduled to migrate",
    "RenameVM": "VM {} was renamed to {}",
    "CancelMigration": "VM {} was scheduled to cancel its migration",
    "DrainNode": "node/{} drained", "UncordonNode": "node/{} uncordoned",
    "ScaleReplicaSet": "virtualmachineinstancereplicaset.kubevirt.io/{} scaled",
    "ScaleVMPool": "virtualmachinepool.pool.kubevirt.io/{} scaled",
    "AddVolume": "Successfully submitted add volume request to VM {} for volume {}",
    "RemoveVolume": "Successfully submitted remove volume request to VM {} for volume {}",
}  # fmt: skip


# a first apply's event (the KubeVirt object's first, under a name other than the default's)
_CREATED = ("io.virtbus.vm.created.v1", "io.virtbus.rs.created.v1", "io.virtbus.vmpool.created.v1")


def volume_object_name(cmd: c.CreateVolume) -> str:
    if cmd.data_volume:
        return f"datavolume.cdi.kubevirt.io/{cmd.name}"
    return f"persistentvolumeclaim/{cmd.name}"


def instancetype_object_name(cmd: c.ApplyInstancetype | c.ApplyDataSource) -> str:
    if isinstance(cmd, c.ApplyDataSource):
        return f"datasource.cdi.kubevirt.io/{cmd.name}"
    kind = type(cmd).__name__.removeprefix("Apply").replace("Cluster", "cluster")
    return f"virtualmachine{kind.lower()}.instancetype.kubevirt.io/{cmd.name}"


def err(text: str) -> None:
    typer.echo(text, err=True)


def read_manifest(path: str, *, kustomize: bool = False) -> str:
    """The text of `-f PATH` (`-` is stdin), or a ValidationError that names the file; with
    `kustomize`, what `-k PATH` builds (the documents its kustomization makes)."""
    if kustomize:
        from virtctl.kustomize import render

        return render(path)
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


async def manifest_commands(
    path: str, *, namespace: str, verb: str, kustomize: bool = False
) -> tuple[list[c.Command], int]:
    """The commands of every document of `-f PATH` (`-k PATH`: see `read_manifest`), read and
    parsed before anything connects (a bad file is reported without a bus); a refused document's
    error is printed and counted."""
    text = await asyncio.to_thread(read_manifest, path, kustomize=kustomize)
    docs = parse_documents(text)
    if not docs:  # kubectl's words for an empty file, or one of only comments and `---`
        raise ValidationError(f"no objects passed to {verb}", field="filename")
    found: list[c.Command] = []
    failed = 0
    for doc in docs:
        try:
            cmds, warnings = to_commands(doc, default_namespace=namespace)
        except ValidationError as e:
            err(f"error: {e.message}")
            failed += 1
            continue
        for w in warnings:
            err(f"Warning: {w.removeprefix('warning: ')}")
        found += cmds
    return found, failed


async def apply_file(
    url: str, *, path: str, namespace: str, actor: str = "", kustomize: bool = False
) -> int:
    """`apply -f` (`-k`): each object created, configured or unchanged; `actor` says who asked
    (on a secured bus the server's word for it replaces it)."""
    cmds, failed = await manifest_commands(path, namespace=namespace, verb="apply",
                                           kustomize=kustomize)  # fmt: skip
    async with session(url) as nc:
        for one in cmds:
            cmd = msgspec.structs.replace(one, actor=one.actor or actor)
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
    if isinstance(cmd, c.CreateVolume):  # a claim is core v1; a DataVolume is CDI's
        created = CE_TYPE[m.VolumeCreated] in outcome.events
        verb = "created" if created else "configured" if outcome.events else "unchanged"
        return f"{volume_object_name(cmd)} {verb}"
    if isinstance(cmd, c.ApplyInstancetype | c.ApplyDataSource | c.ApplyMigrationPolicy):
        verb = "unchanged" if not outcome.events else (
            "created" if outcome.version == len(outcome.events) else "configured")  # fmt: skip
        if isinstance(cmd, c.ApplyMigrationPolicy):
            return f"migrationpolicy.migrations.kubevirt.io/{cmd.name} {verb}"
        return f"{instancetype_object_name(cmd)} {verb}"
    if isinstance(cmd, c.MigrateVM):  # the object is the migration, named by the manifest
        verb = "created" if outcome.events else "unchanged"
        return f"{kind}.kubevirt.io/{cmd.migration or cmd.name} {verb}"
    if isinstance(cmd, c.ApplyVM) and cmd.source_kind == "VirtualMachineInstance":
        kind = "virtualmachineinstance"
    verb = "unchanged"
    if any(t in _CREATED for t in outcome.events):
        verb = "created"
    elif outcome.events:
        verb = "configured"
    if isinstance(cmd, c.SnapshotVM | c.RestoreVM):  # named for themselves, not for the VM
        name = cmd.snapshot if isinstance(cmd, c.SnapshotVM) else cmd.restore
        return f"{kind}.snapshot.kubevirt.io/{name} created"
    if isinstance(cmd, c.ApplyKubeVirt) and outcome.version == 1 and outcome.events:
        verb = "created" if (cmd.namespace, cmd.name) != ("kubevirt", "kubevirt") else verb
    group = "pool.kubevirt.io" if isinstance(cmd, c.ApplyVMPool) else "kubevirt.io"
    return f"{kind}.{group}/{cmd.name} {verb}"


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
    url: str, *, kind: Kind, name: str | None, namespace: str | None, out: Output,
    selector: Selector, watch: bool,
) -> int:  # fmt: skip
    """`get`; with `-w`, the table (or objects) of VMs, VMIs or nodes, then a line per change."""
    if not watch:
        return await getting.get(url, kind=kind, name=name, namespace=namespace, out=out,
                                 selector=selector)  # fmt: skip
    if out.form not in ("", "wide", "json", "yaml", "name"):
        raise ValidationError("-w: a watch prints a table, names, json or yaml", field="watch")
    if kind not in (VM, VMI, NODE) or selector.requirements or out.form == "name":
        from virtctl.watching import watch as watch_listing

        async with session(url) as nc:
            await watch_listing(nc, kind=kind, name=name, namespace=namespace, out=out,
                                selector=selector)  # fmt: skip
        return 0
    output, key = out.form, {VM: "vms", VMI: "vmis", NODE: "nodes"}[kind]
    async with session(url) as nc:
        q = Query(what="nodes" if kind is NODE else "vms", namespace=namespace, name=name)
        answer = await query(nc, q)
        # A named lookup returns deleted VMs too; a VM without a phase has no VMI.
        vms = [s for s in answer.vms if s.exists and (kind is not VMI or s.phase)
               and (kind is not VM or getting.is_vm(s))]  # fmt: skip
        if kind is NODE:  # the VMS column counts every namespace's VMs on each node
            vms = (await query(nc, Query(what="vms"))).vms
        nodes = [n for n in answer.nodes if name is None or n.name == name]
        if name and not (nodes if kind is NODE else vms):
            raise VirtbusError(kind.not_found(name))
        text = _render(key, vms, nodes, output=output, namespace=namespace,
                       single=name is not None)  # fmt: skip
        typer.echo(text.rstrip("\n"))
        await _watch(nc, kind=key, name=name, namespace=namespace, output=output,
                     vms=vms, nodes=nodes, position=answer.position)  # fmt: skip
    return 0


def _render(
    kind: str, vms: list[VMState], nodes: list[NodeState], *, output: str,
    namespace: str | None, header: bool = True, single: bool = False,
) -> str:  # fmt: skip
    if output in ("json", "yaml"):
        objs: list[dict[str, object]]
        if kind == "nodes":
            counts = getting.vm_counts(vms)
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
        text = render.node_table(nodes, getting.vm_counts(vms), wide=wide)
    elif kind == "vmis":
        text = render.vmi_table(vms, wide=wide, namespace=namespace)
    else:
        text = render.vm_table(vms, wide=wide, namespace=namespace)
    if header or text.startswith("No resources"):
        return text
    return "\n".join(text.splitlines()[1:])


async def _watch(
    nc: object, *, kind: str, name: str | None, namespace: str | None, output: str,
    vms: list[VMState], nodes: list[NodeState], position: int,
) -> None:  # fmt: skip
    store = EventStore(nc)  # type: ignore[arg-type]
    states = {f"{s.namespace}/{s.name}": s for s in vms}
    node_states = {n.name: n for n in nodes}
    vms_of = f"virt.vm.{namespace or '*'}.{name or '*'}.>"
    subjects = ["virt.node.>"] if kind == "nodes" else [vms_of]
    async for rec in store.follow(from_seq=position + 1, subjects=subjects):
        ref = rec.subject.split(".")
        if ref[1] == "vm" and kind != "nodes":
            key = f"{ref[2]}/{ref[3]}"
            if (name and ref[3] != name) or (namespace and ref[2] != namespace):
                continue
            before = states.get(key)
            if before is None:
                before = (await VMRepository(store).get(Ref("vm", ref[2], ref[3])))[0]
            if before.version >= rec.envelope.version:  # a later page of the list had it
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


async def describe(url: str, *, kind: Kind, name: str, namespace: str) -> int:
    """`describe vm|vmi NAME`: the state, its conditions and the latest events of its history."""
    async with session(url) as nc:
        answer = await query(nc, Query(what="vms", namespace=namespace, name=name))
        s = answer.vms[0] if answer.vms else VMState()
        if not s.exists or (kind is VM and not getting.is_vm(s)) or (kind is VMI and not s.phase):
            raise VirtbusError(kind.not_found(name))
        history = await EventStore(nc).read(Ref.vm(name, namespace))
    now = datetime.now(UTC)
    lines = [
        f"Name:           {s.name}", f"Namespace:      {s.namespace}",
        f"Kind:           {kind.kind}",
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


API_SERVICE = "virtbus-api"  # the orchestrator's NATS micro service


def version_info(version: str) -> str:
    """virtctl's `version.Info{...}` line, with what a Python build has to say."""
    import platform

    python = f"{platform.python_implementation()} {platform.python_version()}"
    where = f"{sys.platform}/{platform.machine()}"
    return f'version.Info{{GitVersion:"v{version}", Compiler:"{python}", Platform:"{where}"}}'


async def version(url: str, *, client_only: bool) -> int:
    """`virtctl version`: this CLI's version, then virtbus-api's (from `$SRV.INFO`)."""
    import json
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        mine = installed("virtbus")
    except PackageNotFoundError:
        mine = "unknown"
    typer.echo(f"Client Version: {version_info(mine)}")
    if client_only:
        return 0
    async with session(url) as nc:
        try:
            msg = await nc.request(f"$SRV.INFO.{API_SERVICE}", b"", timeout=5)
        except Exception as e:  # no responders or a timeout: no orchestrator answers
            raise VirtbusError(f"the server version is unknown: no {API_SERVICE} answered "
                               f"({type(e).__name__})") from None  # fmt: skip
    typer.echo(f"Server Version: {version_info(str(json.loads(msg.data).get('version', '?')))}")
    return 0
