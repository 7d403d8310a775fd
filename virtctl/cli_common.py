"""What every module of the `virtbus` CLI shares: the common options, the runner, the actor.

The CLI is split by area (`cli.py` and the `cli_*.py` modules); each verb uses these so that
`--server`, `--creds`, `--tls-ca`, `--namespace`, exit codes and error output are the same
everywhere.
"""

from __future__ import annotations

import functools
import getpass
import inspect
import os
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

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


# The bus options every verb that reaches the bus takes (`add_bus_options`): parameter -> flag, help
_BUS_FILES: Final = {
    "creds": ("--creds", "NATS .creds to log in with (else $VIRTBUS_CREDS, else "
                         "./.virtbus/creds/admin.creds)"),
    "tls_ca": ("--tls-ca", "the CA of the bus's certificate (else $VIRTBUS_TLS_CA, else "
                           "./.virtbus/tls/ca.pem)"),
    "tls_cert": ("--tls-cert", "a client certificate, where the bus asks for one (else "
                               "$VIRTBUS_TLS_CERT)"),
    "tls_key": ("--tls-key", "the client certificate's key (else $VIRTBUS_TLS_KEY)"),
}  # fmt: skip
BUS_OPTIONS: Final[dict[str, Any]] = {
    name: Annotated[Path | None, typer.Option(flag, metavar="FILE", help=text)]
    for name, (flag, text) in _BUS_FILES.items()
}
LOCAL_STACK = Path(".virtbus")  # where `make run` keeps its stack, relative to where it ran


def add_bus_options(app: typer.Typer) -> None:
    """Give every verb that takes `--server` (in `app` and its groups) `--creds`, `--tls-ca`,
    `--tls-cert` and `--tls-key` too, in one place: a verb added later gets them without a line
    of its own."""
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
    keyword = inspect.Parameter.KEYWORD_ONLY
    params += [inspect.Parameter(name, keyword, default=None, annotation=option)
               for name, option in BUS_OPTIONS.items()]  # fmt: skip

    @functools.wraps(verb)
    def with_access(*args: Any, **kwargs: Any) -> Any:
        from bus.connect import use

        given = {name: kwargs.pop(name) for name in BUS_OPTIONS}
        use(bus_access(**_checked_files(**given)))
        return verb(*args, **kwargs)

    del with_access.__wrapped__  # what typer reads is the signature below, not the verb's
    with_access.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    with_access.__annotations__ = {p.name: p.annotation for p in params}
    return with_access


def _checked_files(
    *, creds: Path | None, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> dict[str, Path | None]:
    """The bus options' files, once each reads as what it names (else a usage error, before the
    bus is reached)."""
    import ssl

    from bus.connect import tls_context
    from bus.credentials import read_creds

    if (tls_cert is None) != (tls_key is None):
        raise usage("--tls-cert and --tls-key: give both (a client certificate and its key)")
    try:
        if creds is not None:
            read_creds(creds)
        if tls_ca is not None:
            tls_context(tls_ca)
    except ValidationError as err:
        raise usage(f"--{err.field}: {err.message}") from None
    if tls_cert is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(tls_cert), str(tls_key))
        except ssl.SSLError:  # (an OSError too: first) OpenSSL says only "PEM lib" and a line
            why = "not a PEM certificate and its private key"
            raise usage(f"--tls-cert: cannot use {tls_cert} with {tls_key}: {why}") from None
        except OSError as err:
            raise usage(f"--tls-cert: cannot use {tls_cert} with {tls_key}: "
                        f"{err.strerror or err}") from None  # fmt: skip
    return {"creds": creds, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}


def bus_access(
    *, creds: Path | None = None, tls_ca: Path | None = None, tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Access:  # fmt: skip
    """Who the CLI is on the bus: the options, else the environment, else the admin of the stack
    `make run` keeps in ./.virtbus (used only where the server asks: an open bus stays open). A
    client certificate without credentials logs in as the user it names (a bus run with --mtls)."""
    from bus.connect import Access

    env = Access.from_env()
    given = Access(creds or env.creds, tls_ca or env.tls_ca, tls_cert=tls_cert or env.tls_cert,
                   tls_key=tls_key or env.tls_key)  # fmt: skip
    if given.tls_cert is not None and given.creds is None:  # a login by client certificate
        return given.by_certificate(LOCAL_STACK)
    return given if given else (Access.local(LOCAL_STACK) or given)


def _namespace(value: str) -> str:
    # Checked here, once for every verb: a namespace is a subject token, and a listing verb would
    # otherwise read `-n '*'` as a NATS wildcard or print "No resources found in Bad_Name!".
    try:
        return check_name(value, field="namespace")
    except ValidationError as err:
        raise typer.BadParameter(err.message.removeprefix("namespace: ")) from None


NsOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace", callback=_namespace)]

_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SPAN: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
WEEK_S: Final = 7 * 24 * 3600.0


def seconds(text: str | float) -> float:
    """A duration as kubectl reads one (Go's `30s`, `5m`, `1h30m`, `250ms`; negative: a week),
    or a plain number of seconds (what virtbus took before; click hands a default over as is)."""
    value = str(text).strip()
    sign = -1.0 if value.startswith("-") else 1.0
    body = value[1:] if value[:1] in ("+", "-") else value
    try:
        total = float(body)
    except ValueError:
        spans = _SPAN.findall(body)
        if not body or "".join(n + u for n, u in spans) != body:
            raise typer.BadParameter(
                f"time: invalid duration {text!r} (like 30s, 5m, 1h30m, or seconds)"
            ) from None
        total = sum(float(n) * _UNITS[u] for n, u in spans)
    return WEEK_S if sign < 0 else total


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


def each_file(paths: list[str], one: Callable[[str], Awaitable[int]]) -> Coroutine[Any, Any, int]:
    """kubectl's repeated `-f`: each file in the order given, all of them whatever one says;
    1 if any failed. Checked first, as kubectl does: a path that is not there stops all before
    anything is sent (and `-` more than once would read stdin twice)."""
    if paths.count("-") > 1:
        raise ValidationError("-f -: stdin can be given once", field="filename")
    for path in paths:
        if path != "-" and not os.path.exists(path):
            raise ValidationError(f'the path "{path}" does not exist', field="filename")

    async def every() -> int:
        failed = 0
        for path in paths:
            failed |= await one(path)
        return failed

    return every()


KustomizeOpt = Annotated[
    str | None,
    typer.Option("--kustomize", "-k", metavar="DIR",
                 help="a kustomization directory: its resources, namespace, namePrefix, "
                      "nameSuffix, labels, annotations"),
]  # fmt: skip


def each_source(
    filename: list[str] | None, kustomize: str | None, one: Callable[[str, bool], Awaitable[int]]
) -> Coroutine[Any, Any, int]:
    """`-f FILE...` as `each_file` takes them, or kubectl's `-k DIR` (one directory, built by
    kustomize's rules): `one(path, kustomize)` for each; one of the two, not both."""
    if filename and kustomize is not None:
        raise usage("only one of -f or -k can be specified")
    if kustomize is not None:
        if "://" in kustomize or kustomize.startswith(("github.com/", "git@")):
            # (the user guide's `-k https://github.com/kubevirt/common-instancetypes.git`)
            raise ValidationError(f"-k {kustomize}: remote kustomizations are not supported by "
                                  "virtbus; clone it and give the directory",
                                  field="kustomize")  # fmt: skip
        return each_file([kustomize], lambda path: one(path, True))
    if not filename:
        raise usage("must specify one of -f and -k")
    return each_file(filename, lambda path: one(path, False))


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
