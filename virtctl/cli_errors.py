"""Where every failure of a `virtbus` verb becomes one line on stderr and an exit code.

Verbs raise; this is the one place that decides how it reads. Exit 0 ok, 1 rejected or failed
(`error: <reason>`), 2 usage error (click's usage, hint and `Error: <reason>` line, without Rich's
box, which splits a reason over several lines). A VirtbusError is the reason itself; an OSError on a
file names the file; a NATS failure names the bus. Anything else is a bug: one line saying so, the
traceback only with VIRTBUS_DEBUG=1, so a true bug stays visible without a Python dump.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Final

import typer
from click import Command, Context, Option
from click.exceptions import ClickException, NoArgsIsHelpError
from nats.errors import Error as NatsError
from typer.core import TyperGroup

from events.errors import VirtbusError
from virtctl.kubectlflags import globals_first

DEBUG_ENV = "VIRTBUS_DEBUG"


def describe(exc: BaseException) -> str:
    """The one line (without `error: `) that reports `exc` to the user."""
    if isinstance(exc, VirtbusError):
        return exc.message
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: {exc.reason} at byte {exc.start}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, OSError):  # a socket or the disk, not our code
        return str(exc.strerror or exc)
    if isinstance(exc, NatsError):  # connecting has its own message (bus.connect); this is later
        return f"the bus failed: {exc}"
    return f"internal error: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, VirtbusError | OSError | UnicodeDecodeError | NatsError)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def report(exc: BaseException) -> int:
    """Print `exc` as `error: ...` on stderr; the exit code is 1."""
    if _expected(exc):
        typer.echo(f"error: {_one_line(describe(exc))}", err=True)
        return 1
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(exc, file=sys.stderr)
        typer.echo(f"error: {_one_line(describe(exc))}", err=True)
    else:
        typer.echo(f"error: {_one_line(describe(exc))} (set {DEBUG_ENV}=1 for the traceback)",
                   err=True)  # fmt: skip
    return 1


_SHORT_EQ: Final = re.compile(r"-[A-Za-z]=")


def pflag_shorts(args: list[str]) -> list[str]:
    """kubectl's and virtctl's `-p=VALUE` (pflag's form, as the user guide writes `-p='[...]'`)
    as click takes it, `-p VALUE`: click would read the value as `=VALUE`. After `--` nothing is
    touched."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out += [arg[:2], arg[3:]] if _SHORT_EQ.match(arg) else [arg]
    return out


def flag_names(command: Command) -> dict[str, tuple[str, str]]:
    """Every boolean flag under `command`: its name -> (its on form, its off form or ""); a name
    that some verb's option takes a value under is left out."""
    flags: dict[str, tuple[str, str]] = {}
    valued: set[str] = set()

    def walk(cmd: Command) -> None:
        for param in cmd.params:
            if not isinstance(param, Option):
                continue
            if not param.is_flag or param.count:
                valued.update(param.opts)
                continue
            on, off = [*param.opts, ""][0], [*param.secondary_opts, ""][0]
            for name in (*param.opts, *param.secondary_opts):
                flags[name] = (on, off) if name in param.opts else (off, on)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(command)
    return {name: forms for name, forms in flags.items() if name not in valued}


def pflag_bools(args: list[str], flags: dict[str, tuple[str, str]]) -> list[str]:
    """pflag's `--watch=true|false` as click takes it: the flag, its off form, or nothing."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if eq and name in flags and value.lower() in ("true", "false"):
            on, off = flags[name]
            chosen = on if value.lower() == "true" else off
            out += [chosen] if chosen else []
        else:
            out.append(arg)
    return out


class VirtbusGroup(TyperGroup):
    """The root `virtbus` command: runs a verb and turns what it raises into `report`'s line."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            kubectls = globals_first(pflag_shorts(pflag_bools(args, flag_names(self))))
        except VirtbusError as e:  # a usage error, said as `usage()` says one (exit 2)
            typer.echo(f"error: {e.message}", err=True)
            raise typer.Exit(2) from None
        return super().parse_args(ctx, kubectls)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # the caller handles outcomes itself
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        sys.exit(self._exit_code(args, prog_name, complete_var, windows_expand_args, **extra))

    def _exit_code(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        windows_expand_args: bool,
        **extra: Any,
    ) -> int:
        try:
            # Not standalone: typer returns Exit's code and lets every other exception through.
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as e:  # typer has printed the help already
            return e.exit_code
        except ClickException as e:
            e.show()  # usage, the help hint and one `Error: ` line, as click prints them
            return e.exit_code
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            return 1
        except Exception as e:
            return report(e)
        return rv if isinstance(rv, int) else 0
