"""What every module of the `virtbus` CLI shares: the common options, the runner, the actor.

The CLI is split by area (`cli.py` and the `cli_*.py` modules); each verb uses these so that
`--server`, `--namespace`, exit codes and error output are the same everywhere.
"""

from __future__ import annotations

import getpass
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
import uvloop

from events.errors import VirtbusError

T = TypeVar("T")

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", "-s", help="NATS URL (else $VIRTBUS_NATS_URL, else nats://127.0.0.1:4222)"
    ),
]
NsOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a verb's coroutine; a VirtbusError is `error: ...` on stderr and exit 1."""
    try:
        return uvloop.run(coro)
    except VirtbusError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def finish(code: int) -> None:
    if code:
        raise typer.Exit(code)


def actor() -> str:
    """Who asked: recorded in every command's envelope."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
