"""`virtbus volume create|get|move|delete` and `image-upload`: the typer verbs of the volume area.

`virtbus/cli.py` adds `volume_app` and `image_upload` to the `virtbus` app. What they do over the
bus is in `volumes.py` (and `upload.py` for the image); the shared options and runner come from
`cli_common.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bus.connect import server_url
from events import commands as c
from virtctl.cli_common import NsOpt, ServerOpt, optional_name, seconds, usage
from virtctl.cli_common import actor as _actor
from virtctl.cli_common import finish as _finish
from virtctl.cli_common import run as _run

volume_app = typer.Typer(help="Volumes (PersistentVolumeClaims): create, get, delete.")

VolumeArg = Annotated[str, typer.Argument(help="volume (claim) name")]


@volume_app.command("create")
def volume_create(
    name: VolumeArg,
    size: Annotated[str, typer.Option("--size", help="capacity, a quantity like 1Gi")],
    node: Annotated[str | None, typer.Option("--node", help="the node to hold it")] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            parser=seconds,
            metavar="DURATION",
            help="how long to wait for Bound (60s, 1m...)",
        ),
    ] = 60,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Create an empty volume (a sparse raw disk.img on one node) and wait until it is Bound."""
    from virtctl.volumes import create

    cmd = c.CreateVolume(name=name, namespace=namespace, size=size, node=node, actor=_actor())
    _finish(_run(create(server_url(server), cmd, wait_s=timeout)))


@volume_app.command("get")
def volume_get(
    name: Annotated[str | None, typer.Argument(help="volume name")] = None,
    namespace: NsOpt = "default",
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    output: Annotated[str, typer.Option("-o", "--output", help="json or yaml")] = "",
    server: ServerOpt = None,
) -> None:
    """List volumes like `kubectl get pvc`."""
    from virtctl.volumes import get

    if output not in ("", "table", "json", "yaml"):
        raise usage(f"-o {output!r}: use json or yaml")
    ns = None if all_namespaces else namespace
    _finish(_run(get(server_url(server), name=optional_name(name), namespace=ns, output=output)))


@volume_app.command("move")
def volume_move(
    name: VolumeArg,
    to: Annotated[str, typer.Option("--to", help="the node to move it to")],
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", parser=seconds, metavar="DURATION", help="how long to wait (10m, 600...)"
        ),
    ] = 600,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Copy a volume to another node over the bus (its stopped VMs follow it)."""
    from virtctl.volumes import move

    cmd = c.MoveVolume(name=name, namespace=namespace, node=to, actor=_actor())
    _finish(_run(move(server_url(server), cmd, wait_s=timeout)))


@volume_app.command("delete")
def volume_delete(name: VolumeArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Delete a volume and its data on its node (refused while a VM names it)."""
    from virtctl.volumes import delete

    _finish(_run(delete(server_url(server), c.DeleteVolume(name=name, namespace=namespace,
                                                           actor=_actor()))))  # fmt: skip


def image_upload(
    kind: Annotated[
        str | None, typer.Argument(help="dv or pvc (virtctl's form), then NAME")
    ] = None,
    name: Annotated[str | None, typer.Argument(help="the volume to upload into")] = None,
    image_path: Annotated[
        Path | None, typer.Option("--image-path", help=".img, .qcow2 or .iso, maybe .gz/.xz/.tar")
    ] = None,
    archive_path: Annotated[
        Path | None, typer.Option("--archive-path", help="a .tar archive holding the image")
    ] = None,
    size: Annotated[str, typer.Option("--size", help="the volume's size, like 10Gi")] = "",
    no_create: Annotated[
        bool, typer.Option("--no-create", help="upload into a claim already created for it")
    ] = False,
    pvc_name: Annotated[str, typer.Option("--pvc-name", help="deprecated: pvc NAME")] = "",
    pvc_size: Annotated[str, typer.Option("--pvc-size", help="deprecated: --size")] = "",
    url: Annotated[str | None, typer.Option("--url", help="import from http(s) instead")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="skip TLS verification")] = False,
    node: Annotated[str | None, typer.Option("--node", help="the node to hold it")] = None,
    wait_secs: Annotated[float, typer.Option("--wait-secs", min=0, help="for processing")] = 300,
    uploadproxy_url: Annotated[
        str | None, typer.Option("--uploadproxy-url", help="virtctl's CDI proxy: not needed")
    ] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Upload a disk image into a volume (virtctl image-upload dv|pvc NAME --size S), as raw."""
    from virtctl.upload import upload

    if uploadproxy_url:  # accepted so virtctl command lines run as they are
        typer.echo(f"note: --uploadproxy-url {uploadproxy_url} is not used: the image goes to "
                   "the node over the bus", err=True)  # fmt: skip
    target = _upload_target(kind, name, pvc_name)
    size = _one_of("--size", size, "--pvc-size", pvc_size)
    if not size and not no_create:
        if kind is None:  # the deprecated form: its own flag's name
            raise usage("--pvc-size is required")
        raise usage("--size is required (or --no-create, to upload into a claim made for it)")
    if archive_path is not None:
        if image_path is not None:
            raise usage("--archive-path: give either --image-path or --archive-path")
        if not archive_path.name.lower().endswith(".tar"):
            raise usage(f"--archive-path: {archive_path.name!r} is not a .tar archive")
        image_path = archive_path
    coro = upload(server_url(server), name=target, namespace=namespace, pvc_size=size,
                  image_path=image_path, source_url=url, insecure=insecure, node=node,
                  wait_s=wait_secs, actor=_actor(), create=not no_create,
                  data_volume=(kind or "").lower() in ("dv", "datavolume"))  # fmt: skip
    _finish(_run(coro))


def _upload_target(kind: str | None, name: str | None, pvc_name: str) -> str:
    """`image-upload dv|pvc NAME` or the deprecated `--pvc-name NAME`: the volume's name."""
    if kind is None:
        if not pvc_name:
            raise usage("give the volume as pvc NAME (or dv NAME, or the deprecated --pvc-name)")
        return pvc_name
    if kind.lower() not in ("dv", "datavolume", "pvc", "persistentvolumeclaim"):
        raise usage(f"image-upload {kind}: use image-upload dv NAME or image-upload pvc NAME")
    if name is None:
        raise usage(f"image-upload {kind}: give the NAME")
    if pvc_name and pvc_name != name:
        raise usage(f"--pvc-name {pvc_name!r} names another volume than {kind} {name!r}")
    return name


def _one_of(flag: str, value: str, old_flag: str, old_value: str) -> str:
    if value and old_value and value != old_value:
        raise usage(f"{old_flag} {old_value!r} differs from {flag} {value!r}; give one")
    return value or old_value
