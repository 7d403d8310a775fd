"""kubectl's verbs over every kind virtbus has: get, describe, wait, delete, patch (`create` is
in `cli_guest`, beside virtctl's `create vm`).

The typer layer only: each verb reads `KIND NAME` or kubectl's `KIND/NAME`, checks `-o`, `-l`,
`--for` and `--type` before anything connects (a typo costs no bus round trip), then calls one
coroutine of `getting`, `waiting`, `objects` or `verbs`. `register` adds them to the `virtbus` app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bus.connect import server_url
from events.errors import VirtbusError
from virtctl.cli_common import (
    KustomizeOpt,
    NsOpt,
    ServerOpt,
    actor,
    each_source,
    finish,
    optional_name,
    run,
    seconds,
    usage,
)
from virtctl.kinds import KUBEVIRT, SUPPORTED, VM, VMI, Kind, split
from virtctl.listing import Output
from virtctl.selector import parse as parse_selector

KindArg = Annotated[str, typer.Argument(help=f"the kind ({SUPPORTED}), or KIND/NAME")]
MaybeName = Annotated[str | None, typer.Argument(help="its name (not with KIND/NAME)")]
_FOR_HELP = ("condition=Ready, jsonpath={.status.phase}=Running, delete, create, status=Running, "
             "phase=Running")  # fmt: skip
FileOpt = Annotated[str, typer.Option("--filename", "-f", help="manifest file, or - for stdin")]


def _target(what: str, name: str | None, *, needed: bool) -> tuple[Kind, str | None]:
    try:
        kind, named = split(what, optional_name(name))
    except VirtbusError as err:
        if err.field == "kind":  # an unknown kind is the server's "no such resource type": 1
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        raise usage(str(err)) from None
    if needed and named is None:
        raise usage(f"{what}: give a name, as {what} NAME or {what}/NAME")
    return kind, named


def get(
    kind: KindArg,
    name: MaybeName = None,
    namespace: NsOpt = "default",
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    output: Annotated[
        str, typer.Option("-o", "--output", help="wide, json, yaml, name or jsonpath=TEMPLATE")
    ] = "",
    selector: Annotated[
        str, typer.Option("-l", "--selector", help="labels: k=v, k!=v, k in (a,b), k, !k")
    ] = "",
    watch: Annotated[bool, typer.Option("--watch", "-w")] = False,
    server: ServerOpt = None,
) -> None:
    """List or show objects of a kind like kubectl (VMs, VMIs, nodes, replica sets, migrations,
    snapshots, restores, volumes)."""
    from virtctl.verbs import get as get_

    target, named = _target(kind, name, needed=False)
    try:
        out, chosen = Output.parse(output), parse_selector(selector)
    except VirtbusError as err:
        raise usage(str(err)) from None
    if named is not None and chosen.requirements:
        raise usage("name cannot be provided when a selector is specified")
    ns = None if all_namespaces else namespace
    finish(run(get_(server_url(server), kind=target, name=named, namespace=ns, out=out,
                    selector=chosen, watch=watch)))  # fmt: skip


def describe(
    kind: KindArg, name: MaybeName = None, namespace: NsOpt = "default", server: ServerOpt = None
) -> None:
    """Show an object in words: a VM's state, conditions and latest events; any other kind's
    fields as kubectl's describe prints a custom resource."""
    from virtctl.getting import describe_any
    from virtctl.verbs import describe as describe_vm

    target, named = _target(kind, name, needed=True)
    assert named is not None
    url = server_url(server)
    if target in (VM, VMI):
        finish(run(describe_vm(url, kind=target, name=named, namespace=namespace)))
        return
    finish(run(describe_any(url, kind=target, name=named, namespace=namespace)))


def wait(
    kind: KindArg,
    for_: Annotated[
        str,
        typer.Option("--for", help=_FOR_HELP),
    ],
    name: MaybeName = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", parser=seconds, metavar="DURATION", help="30s, 5m, ... (or seconds)"
        ),
    ] = 30.0,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Wait until an object meets a condition, like kubectl wait."""
    from virtctl import waiting

    target, named = _target(kind, name, needed=True)
    assert named is not None
    try:
        waiting.parse(target, for_)
    except VirtbusError as err:
        raise usage(str(err)) from None
    met = run(waiting.wait(server_url(server), kind=target, name=named, namespace=namespace,
                           condition=for_, timeout_s=timeout))  # fmt: skip
    plural = target.resource.partition(".")[0]
    if not met:
        typer.echo(f"error: timed out waiting for the condition on {plural}/{named}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{target.object_name(named)} condition met")


def delete(
    what: Annotated[str | None, typer.Argument(help="a VM name, KIND NAME or KIND/NAME")] = None,
    name: MaybeName = None,
    filename: Annotated[
        list[str] | None,
        typer.Option("--filename", "-f", help="delete what this manifest names; repeatable"),
    ] = None,
    kustomize: KustomizeOpt = None,
    cascade: Annotated[
        str, typer.Option("--cascade", help="background (default), foreground or true")
    ] = "background",
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Delete an object of any kind (a VM keeps its disks, see `undelete`), or those a manifest
    names (`-f`)."""
    from virtctl import objects

    if cascade in ("orphan", "false"):
        raise usage(f"--cascade={cascade}: virtbus deletes what an object owns with it (a VM's "
                    "instance, a replica set's or pool's VMs); an orphan is not left "
                    "running")  # fmt: skip
    if cascade not in ("background", "foreground", "true"):
        raise usage(f'--cascade={cascade}: must be "background", "orphan", or "foreground"')

    url = server_url(server)
    if filename or kustomize is not None:
        if what is not None:
            raise usage(f"{'-f' if filename else '-k'}: give either a file or KIND NAME, not both")
        who = actor()
        finish(run(each_source(filename, kustomize, lambda path, kz: objects.delete_file(
            url, path=path, namespace=namespace, actor=who, kustomize=kz))))  # fmt: skip
        return
    if what is None:
        raise usage("give a VM name, KIND NAME, KIND/NAME, -f FILE or -k DIR")
    if name is None and "/" not in what:
        what, name = "vm", what  # virtbus's older `delete NAME`
    target, named = _target(what, name, needed=True)
    assert named is not None
    finish(run(objects.delete(url, kind=target, name=named, namespace=namespace, actor=actor())))


def patch(
    kind: KindArg,
    patch_: Annotated[str, typer.Option("--patch", "-p", help="the patch, JSON")],
    name: MaybeName = None,
    type_: Annotated[
        str, typer.Option("--type", help="merge (RFC 7386) or json (RFC 6902)")
    ] = "strategic",
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Change a VM or replica set in place (`--type merge|json`), recorded as an apply."""
    from virtctl.editing import patch as patch_object
    from virtctl.patching import TYPES

    target, named = _target(kind, name, needed=True)
    assert named is not None
    if type_ not in TYPES:
        raise usage(f"--type {type_!r}: use merge or json")
    finish(run(patch_object(server_url(server), kind=target, name=named, namespace=namespace,
                            kind_of_patch=type_, patch_text=patch_, actor=actor())))  # fmt: skip


def edit(
    kind: KindArg,
    name: MaybeName = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Change a VM, replica set, the KubeVirt object or an instance type in your editor
    ($KUBE_EDITOR, $EDITOR, vi), then apply it, like kubectl edit."""
    from virtctl.editing import edit as edit_object

    # The KubeVirt object is one a cluster: kubectl's `edit kubevirt -n kubevirt` edits it.
    target, named = _target(kind, name, needed=False)
    if named is None and target is not KUBEVIRT:
        raise usage(f"{kind}: give a name, as {kind} NAME or {kind}/NAME")
    finish(run(edit_object(server_url(server), kind=target, name=named, namespace=namespace,
                           actor=actor())))  # fmt: skip


def label(
    kind: KindArg,
    changes: Annotated[list[str], typer.Argument(help="NAME (unless KIND/NAME), then k=v or k-")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a label that has another value")
    ] = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Add (k=v) or remove (k-) labels of a VM, replica set, the KubeVirt object or an instance
    type, like kubectl label."""
    _pairs(kind, changes, overwrite=overwrite, namespace=namespace, server=server, field="labels")


def annotate(
    kind: KindArg,
    changes: Annotated[list[str], typer.Argument(help="NAME (unless KIND/NAME), then k=v or k-")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an annotation that has another value")
    ] = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Add (k=v) or remove (k-) annotations of a VM, like kubectl annotate."""
    _pairs(kind, changes, overwrite=overwrite, namespace=namespace, server=server,
           field="annotations")  # fmt: skip


def _pairs(
    kind: str, changes: list[str], *, overwrite: bool, namespace: str, server: str | None,
    field: str,
) -> None:  # fmt: skip
    """`label` and `annotate`: `KIND NAME k=v...` or `KIND/NAME k=v...`."""
    from virtctl.editing import set_pairs

    name = None if "/" in kind else (changes[0] if changes else None)
    target, named = _target(kind, name, needed=True)
    assert named is not None
    rest = changes[1:] if name is not None else changes
    if not rest:
        verb, one = ("label", "label") if field == "labels" else ("annotate", "annotation")
        raise usage(f"{verb}: give at least one {one} update (k=v or k-)")
    url = server_url(server)
    finish(run(set_pairs(url, kind=target, name=named, namespace=namespace, changes=rest,
                         overwrite=overwrite, actor=actor(), field=field)))  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add these verbs to the `virtbus` app, in `--help`'s order."""
    for verb in (delete, get, describe, wait, patch, edit, label, annotate):
        app.command()(verb)
