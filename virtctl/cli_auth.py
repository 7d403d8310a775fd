"""`virtbus auth add-user|add-node|list|revoke|whoami|can-i`: who may use the bus, with which role.

The key pair is made here and its seed never leaves this machine: the orchestrator is sent only
the public key, records the user in the log (`UserAdded`, with the JWT it signed) and the CLI
writes the `.creds` file any NATS client can use. Revoking needs no server restart: the server
cuts the user's connections as soon as the orchestrator hands it the revocation.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

import msgspec
import typer
from nats.aio.client import Client

from bus.client import send, session
from bus.connect import identity, server_url
from bus.credentials import SENTINEL, KeyPair, creds_text, write_secret
from bus.pki import Issued, issue
from bus.store import EventStore
from events import commands as c
from events import model as m
from events.envelope import Recorded
from events.errors import ValidationError
from events.names import CLUSTER, Ref, check_name
from events.render import age
from events.users import EDITABLE, NODE, UserState, fold_user, may_command, read_scope
from virtctl.cli_common import (
    LOCAL_STACK,
    NameArg,
    NsOpt,
    Output,
    ServerOpt,
    actor,
    finish,
    run,
    usage,
)

auth_app = typer.Typer(help="Users and nodes of the bus: add (writes a .creds file), list, revoke.")


class Role(StrEnum):
    """KubeVirt's `kubevirt.io:admin|edit|view`."""

    admin = "admin"
    edit = "edit"
    view = "view"


OutFile = Annotated[
    Path | None, typer.Option("-o", "--output", help="where to write the .creds (NAME.creds)")
]
CertOpt = Annotated[
    bool,
    typer.Option("--client-cert", help="also a client certificate (a bus run with --mtls), "
                 "signed with the local stack's CA: run where `make run` runs"),
]  # fmt: skip


@auth_app.command("add-user")
def add_user(
    name: NameArg,
    role: Annotated[Role, typer.Option(help="admin, edit or view")],
    namespace: Annotated[
        list[str],
        typer.Option("--namespace", "-n", help="a namespace it works in (repeat; none: all)"),
    ] = [],  # noqa: B006 (typer reads it, never mutates it)
    output: OutFile = None,
    client_cert: CertOpt = False,
    server: ServerOpt = None,
) -> None:
    """Add a user and write its credentials (a NATS .creds file)."""
    if namespace and role is Role.admin:
        raise usage("--namespace: an admin is not limited to namespaces")
    for ns in namespace:
        _checked(ns, "--namespace")
    out = _fresh(output, name, cert=client_cert)
    ca = _local_ca() if client_cert else None
    finish(run(_add(server_url(server), name=_checked(name, "NAME"), role=role.value,
                    namespaces=namespace, out=out, ca=ca)))  # fmt: skip


@auth_app.command("add-node")
def add_node(
    name: NameArg, output: OutFile = None, client_cert: CertOpt = False, server: ServerOpt = None
) -> None:
    """Add a node worker's identity and write its credentials (a NATS .creds file)."""
    out, ca = _fresh(output, name, cert=client_cert), _local_ca() if client_cert else None
    finish(run(_add(server_url(server), name=_checked(name, "NAME"), role=NODE, namespaces=[],
                    out=out, ca=ca)))  # fmt: skip


@auth_app.command("list")
def list_users(
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    server: ServerOpt = None,
) -> None:
    """The users the log knows, their roles and whether they are revoked."""
    finish(run(_list(server_url(server), output=output)))


@auth_app.command("whoami")
def whoami(server: ServerOpt = None) -> None:
    """Who the bus says you are, and your role (kubectl's `auth whoami`)."""
    finish(run(_whoami(server_url(server))))


READS: Final = frozenset({"get", "list", "watch", "describe", "history"})
WRITES: Final = frozenset({"create", "apply", "update", "patch", "delete", "start", "stop",
                           "restart", "pause", "unpause", "migrate", "rename", "snapshot",
                           "restore", "drain", "cordon", "uncordon", "scale"})  # fmt: skip
RESOURCES: Final = {
    **dict.fromkeys(("vm", "vms", "virtualmachine", "virtualmachines", "vmi", "vmis",
                     "virtualmachineinstance", "virtualmachineinstances"), "vm"),
    **dict.fromkeys(("vmirs", "virtualmachineinstancereplicaset",
                     "virtualmachineinstancereplicasets"), "rs"),
    **dict.fromkeys(("vmpool", "vmpools", "virtualmachinepool", "virtualmachinepools"), "vmpool"),
    **dict.fromkeys(("kubevirt", "kubevirts", "kv", "kvs"), "kubevirt"),
    **dict.fromkeys(("pvc", "pvcs", "persistentvolumeclaim", "persistentvolumeclaims", "volume",
                     "volumes"), "volume"),
    **dict.fromkeys(("node", "nodes"), "node"),
    **dict.fromkeys(("webhook", "webhooks"), "webhook"),
    **dict.fromkeys(("user", "users"), "user"),
}  # fmt: skip


@auth_app.command("can-i")
def can_i(
    verb: Annotated[str, typer.Argument(help="get, list, create, delete, start, stop, migrate...")],
    resource: Annotated[str, typer.Argument(help="vms, vmis, vmirs, pvcs, nodes, webhooks, users")],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Whether your role lets you do VERB to RESOURCE (kubectl's `auth can-i`): yes (exit 0) or
    no (exit 1), judged as virtbus-api and the intake judge it."""
    if verb not in READS | WRITES:
        raise usage(f"VERB: {verb!r} is not one of {', '.join(sorted(READS | WRITES))}")
    kind = RESOURCES.get(resource.lower().split(".", 1)[0])
    if kind is None:
        raise usage(f'RESOURCE: the server doesn\'t have a resource type "{resource}"')
    finish(run(_can_i(server_url(server), write=verb in WRITES, kind=kind, namespace=namespace)))


@auth_app.command("revoke")
def revoke(name: NameArg, server: ServerOpt = None) -> None:
    """Revoke every key of a user: its connections are cut now, no server restart."""
    finish(run(_revoke(server_url(server), name=_checked(name, "NAME"))))


def _checked(value: str, what: str) -> str:
    try:
        return check_name(value, field=what)
    except ValidationError as err:
        raise usage(err.message) from None


def _fresh(output: Path | None, name: str, *, cert: bool) -> Path:
    out = output or Path(f"{name}.creds")
    for path in (out, *(_cert_files(out) if cert else ())):
        if path.exists():
            raise usage(f"-o: {path} exists; remove it or name another file")
    return out


def _cert_files(out: Path) -> tuple[Path, Path]:
    """Where a client certificate and its key go, beside the `.creds` file `out`."""
    return out.with_suffix(".pem"), out.with_name(f"{out.stem}-key.pem")


def _local_ca() -> Issued:
    """The CA of the stack `make run` keeps here, with its key (it signs client certificates)."""
    tls = LOCAL_STACK / "tls"
    try:
        return Issued((tls / "ca.pem").read_bytes(), (tls / "ca-key.pem").read_bytes())
    except OSError as err:
        raise usage(f"--client-cert: no stack CA here ({err.filename}): run it where `make run` "
                    "runs, as the stack's admin") from None  # fmt: skip


async def _add(
    url: str, *, name: str, role: str, namespaces: list[str], out: Path, ca: Issued | None
) -> int:
    pair = KeyPair.new("user")
    cmd = c.AddUser(name=name, role=role, namespaces=namespaces, public_key=pair.public,
                    actor=actor())  # fmt: skip
    async with session(url) as nc:
        await send(nc, cmd)
        history = await EventStore(nc).read(Ref("user", CLUSTER, name))
    added = [e for r in history if isinstance(e := r.envelope.data, m.UserAdded)
             and e.public_key == pair.public]  # fmt: skip
    write_secret(out, creds_text(added[-1].jwt, pair.seed))
    where = f" in {', '.join(namespaces)}" if namespaces else ""
    typer.echo(f'user "{name}" added ({role}{where}): credentials in {out}')
    if ca is not None:
        cert, key = _cert_files(out)
        leaf = issue(ca, f"{name}@virtbus", client=True)
        write_secret(key, leaf.key_pem)
        cert.write_bytes(leaf.cert_pem)
        typer.echo(f"client certificate in {cert}, its key in {key}")
        # the login by certificate alone presents the stack's sentinel (it grants nothing itself)
        sentinel = cert.with_name(f"{SENTINEL}.creds")
        local = LOCAL_STACK / "creds" / sentinel.name
        if not sentinel.exists() and local.is_file():
            write_secret(sentinel, local.read_bytes())
        if sentinel.is_file():
            typer.echo(f"to log in by the certificate alone (no --creds): {sentinel}, beside it")
    return 0


async def _revoke(url: str, *, name: str) -> int:
    async with session(url) as nc:
        await send(nc, c.RevokeUser(name=name, actor=actor()))
    typer.echo(f'user "{name}" revoked')
    return 0


async def _list(url: str, *, output: Output) -> int:
    by_name: dict[str, list[Recorded]] = {}
    async with session(url) as nc:
        await EventStore(nc).replay(
            lambda r: by_name.setdefault(r.subject.split(".")[3], []).append(r),
            subjects=["virt.user.>"], verify=False,
        )  # fmt: skip
    users = [(fold_user(n, (r.envelope for r in rs)), rs[0]) for n, rs in sorted(by_name.items())]
    if output is Output.json:
        typer.echo(json.dumps([msgspec.to_builtins(u) for u, _ in users], indent=2))
        return 0
    if not users:
        typer.echo("No users found.")
        return 0
    rows = [("NAME", "ROLE", "NAMESPACES", "STATUS", "AGE")]
    rows += [(u.name, u.role, ",".join(u.namespaces) or "*", _status(u),
              age(first.envelope.time)) for u, first in users]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        typer.echo("   ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _status(u: UserState) -> str:
    return "Active" if u.exists else "Revoked" if u.revoked else "Unknown"


async def _me(nc: Client) -> UserState | None:
    """The connection's user as the log says, or None on an open bus (no identity)."""
    me = identity(nc)
    if me is None:
        return None
    return fold_user(me, (r.envelope for r in await EventStore(nc).read(Ref("user", CLUSTER, me))))


async def _whoami(url: str) -> int:
    async with session(url) as nc:
        user = await _me(nc)
    if user is None:
        typer.echo("anonymous: an open bus, which asks no one who they are")
        return 0
    rows = [("ATTRIBUTE", "VALUE"), ("Username", user.name), ("Role", user.role or "-"),
            ("Namespaces", ",".join(user.namespaces) or "*"),
            ("Status", _status(user))]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key.ljust(width)}   {value}")
    return 0


async def _can_i(url: str, *, write: bool, kind: str, namespace: str) -> int:
    async with session(url) as nc:
        user = await _me(nc)
    if user is None:  # an open bus refuses no one
        allowed = True
    elif write:
        allowed = may_command(user, kind=kind, namespace=namespace)
    else:
        scope = read_scope(user)
        allowed = user.exists and (kind not in EDITABLE or scope is None or namespace in scope)
    typer.echo("yes" if allowed else "no")
    return 0 if allowed else 1
