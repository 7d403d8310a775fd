"""What every module of the `virtbus` CLI shares: the common options, the runner, the actor.

The CLI is split by area (`cli.py` and the `cli_*.py` modules); each verb uses these so that
`--server`, `--namespace`, exit codes and error output are the same everywhere.
"""

from __future__ import annotations

import getpass
from collections.abc import Coroutine
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
import uvloop

from events.errors import ValidationError, VirtbusError
from events.names import check_name

T = TypeVar("T")

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", "-s", help="NATS URL (else $VIRTBUS_NATS_URL, else nats://127.0.0.1:4222)"
    ),
]


def _namespace(value: str) -> str:
    # Checked here, once for every verb: a namespace is a subject token, and a listing verb would
    # otherwise read `-n '*'` as a NATS wildcard or print "No resources found in Bad_Name!".
    try:
        return check_name(value, field="namespace")
    except ValidationError as err:
        raise typer.BadParameter(err.message.removeprefix("namespace: ")) from None


NsOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace", callback=_namespace)]
NameArg = Annotated[str, typer.Argument(help="VM name")]


class Output(StrEnum):
    table = "table"
    json = "json"


class Hypervisor(StrEnum):
    """`--hypervisor` of `up` and `bench start`."""

    test = "test"
    qemu = "qemu"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a verb's coroutine; a VirtbusError is `error: ...` on stderr and exit 1."""
    try:
        return uvloop.run(coro)
    except VirtbusError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def optional_name(name: str | None) -> str | None:
    """An optional NAME: left out, it means all; given empty, it is a mistake, not `all`."""
    if name == "":
        raise usage("name: an empty name; leave it out to list all")
    return name


def usage(text: str) -> typer.Exit:
    """`error: TEXT` on stderr and the usage error's exit code (2), to raise."""
    typer.echo(f"error: {text}", err=True)
    return typer.Exit(2)


def finish(code: int) -> None:
    if code:
        raise typer.Exit(code)


def actor() -> str:
    """Who asked: recorded in every command's envelope."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def lifecycle(cmd: Any, server: str | None) -> None:
    """Send one command and print what virtctl would (`VM x was scheduled to start`)."""
    from bus.connect import server_url
    from virtctl.verbs import lifecycle as send_and_say

    finish(run(send_and_say(server_url(server), cmd)))
