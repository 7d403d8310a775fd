"""What the CLI error tests share: the verbs enumerated from the typer app, arguments that pass
click's parsing, the in-process runner, and the check that a failure reads as promised.

Enumerating from the app itself (not a list kept here) is what makes a new verb covered without
editing a test. `test_cli_errors.py` (parsing, files, bugs) and `test_cli_errors_bus.py` (a live
and an unreachable bus) use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import click
import typer
from paths import ROOT
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner, Result

from virtbus.cli import app

CLI = [sys.executable, "-m", "virtbus"]
UNREACHABLE = "nats://127.0.0.1:1"  # nothing listens on port 1: the connection is refused
NOT_USAGE = ("Usage:", "Try '", "")  # the lines click prints around a usage error's reason

Leaf = tuple[tuple[str, ...], Any]


def leaves(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every runnable verb under `cmd`, with the words that reach it (`volume create`)."""
    if isinstance(cmd, TyperGroup):
        for name, sub in sorted(cmd.commands.items()):
            yield from leaves(sub, (*path, name))
    else:
        yield path, cmd


CLI_ROOT = typer.main.get_command(app)  # building it takes ~50 ms: one, shared, never altered
LEAVES = dict(leaves(CLI_ROOT))
IDS = [" ".join(p) for p in LEAVES]


def kind(param: Any) -> Any:
    """The Python type a parameter converts to, as click's parameter type says it."""
    t = param.type
    for click_type, py in ((click.types.IntParamType, int), (click.types.FloatParamType, float),
                           (click.types.BoolParamType, bool), (click.Path, Path),
                           (click.Choice, str), (click.types.StringParamType, str)):  # fmt: skip
        if isinstance(t, click_type):
            return py
    return Any


def minimum(param: Any) -> Any:
    return getattr(param.type, "min", None)


def numeric(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if isinstance(p, TyperOption) and kind(p) in (int, float)]


VALID = {"kind": "vm", "what": "vm", "url": "http://127.0.0.1:9/hook", "which": "all",
         "--for": "status=Running", "--size": "1Gi", "--timeout": "1", "--role": "view",
         "--filename": str(ROOT / "examples" / "kubevirt-centos7.yaml")}  # fmt: skip


def valid_args(cmd: Any, *, skip: str = "") -> list[str]:
    """Arguments that pass click's parsing: every required parameter given a plausible value."""
    args: list[str] = []
    for p in cmd.params:
        if p.name == skip or not p.required:
            continue
        key = p.name if isinstance(p, TyperArgument) else p.opts[0]
        value = VALID.get(key, "1" if kind(p) in (int, float) else "x")
        args += [value] if isinstance(p, TyperArgument) else [p.opts[0], value]
    return args


def assert_clean(result: Any, *, code: int | None = None) -> str:
    """A failure as promised; returns the reason line."""
    out, err = result.stdout, result.stderr
    exit_code = result.exit_code
    assert exit_code in (1, 2), f"exit {exit_code}\nstderr: {err}\nstdout: {out}"
    if code is not None:
        assert exit_code == code, f"exit {exit_code}\nstderr: {err}"
    assert "Traceback" not in err + out and 'File "' not in err, err
    assert not out.lstrip().startswith(("{", "[")), f"JSON on stdout of a failure: {out}"
    lines = err.rstrip("\n").split("\n")
    reasons = [ln for ln in lines if ln.startswith(("error: ", "Error: "))]
    assert len(reasons) == 1, f"want one reason line, got:\n{err}"
    others = [ln for ln in lines if ln not in reasons and not ln.startswith(NOT_USAGE)]
    assert all(ln.startswith(("Warning: ", "warning: ", "note: ")) for ln in others), err
    return reasons[0]


def invoke(
    root: Any, *args: str, env: dict[str, str] | None = None, stdin: str | bytes | None = None
) -> Result:
    """`root` (a click command tree) as CliRunner runs a typer app: through its own `main`."""
    with mock.patch("typer.testing._get_command", lambda cmd: cmd):
        return CliRunner().invoke(root, list(args), env=env, input=stdin)
