"""What every module of the `virtbus` CLI shares: the common options, the runner, the actor.

The CLI is split by area (`cli.py` and the `cli_*.py` modules); each verb uses these so that
`--server`, `--creds`, `--tls-ca`, `--namespace`, exit codes and error output are the same
everywhere.
"""

from __future__ import annotations

import functools
import getpass
import inspect
import typing
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvloop

from events.errors import ValidationError, VirtbusError
from events.names import check_name

if TYPE_CHECKING:
    from bus.connect import Access

T = TypeVar("T")

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", "-s", help="NATS URL (else $VIRTBUS_NATS_URL, else nats://127.0.0.1:4222)"
    ),
]


CredsOpt = Annotated[
    Path | None,
    typer.Option(
        "--creds", metavar="FILE",
        help="NATS .creds to log in with (else $VIRTBUS_CREDS, else ./.virtbus/creds/admin.creds)",
    ),
]  # fmt: skip
TlsCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca", metavar="FILE",
        help="the CA of the bus's certificate (else $VIRTBUS_TLS_CA, else ./.virtbus/tls/ca.pem)",
    ),
]  # fmt: skip
LOCAL_STACK = Path(".virtbus")  # where `make run` keeps its stack, relative to where it ran


def add_bus_options(app: typer.Typer) -> None:
    """Give every verb that takes `--server` (in `app` and its groups) `--creds` and `--tls-ca`
    too, in one place: a verb added later gets them without a line of its own."""
    for command in app.registered_commands:
        if command.callback is not None:
            command.callback = _with_access(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            add_bus_options(group.typer_instance)


def _with_access(verb: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(verb)
    if "server" not in signature.parameters or "creds" in signature.parameters:
        return verb
    hints = typing.get_type_hints(verb, include_extras=True)  # typer reads these, resolved
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in signature.parameters.values()]  # fmt: skip
    params += [
        inspect.Parameter("creds", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=CredsOpt),
        inspect.Parameter("tls_ca", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=TlsCaOpt),
    ]  # fmt: skip

    @functools.wraps(verb)
    def with_access(*args: Any, creds: Path | None, tls_ca: Path | None, **kwargs: Any) -> Any:
        from bus.connect import use

        use(bus_access(_readable(creds, option="--creds"), _readable(tls_ca, option="--tls-ca")))
        return verb(*args, **kwargs)

    del with_access.__wrapped__  # what typer reads is the signature below, not the verb's
    with_access.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    with_access.__annotations__ = {p.name: p.annotation for p in params}
    return with_access


def _readable(path: Path | None, *, option: str) -> Path | None:
    """`path`, once it reads as what `option` names (else a usage error, before the bus)."""
    from bus.connect import tls_context
    from bus.credentials import read_creds

    if path is not None:
        try:
            read_creds(path) if option == "--creds" else tls_context(path)
        except ValidationError as err:
            raise usage(f"{option}: {err.message}") from None
    return path


def bus_access(creds: Path | None, tls_ca: Path | None) -> Access:
    """Who the CLI is on the bus: the options, else the environment, else the admin of the stack
    `make run` keeps in ./.virtbus (used only where the server asks: an open bus stays open)."""
    from bus.connect import Access

    env = Access.from_env()
    given = Access(creds or env.creds, tls_ca or env.tls_ca)
    return given if given else (Access.local(LOCAL_STACK) or given)


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
