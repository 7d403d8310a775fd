"""Bad input never stops the CLI with a traceback: every verb, fed missing, malformed and
nonsensical arguments, exits 1 (rejected, `error: <reason>`) or 2 (usage, click's `Error: <reason>`)
with its reason on one line of stderr, and no JSON on stdout.

The verbs are enumerated from the typer app itself, so a new verb is covered without editing this
file. Parse-level cases run in-process (typer's CliRunner goes through the same root `main` as a
terminal, `orchestrator/cli_errors.py`, so exit codes and stderr are the same) with every verb's
body replaced by a tripwire: click must refuse the input before the verb runs. Bad names and
namespaces run the real verbs against one bus and orchestrator shared by the module; an unreachable
bus and a few file cases run as real subprocesses, to prove no traceback reaches a terminal.
"""

from __future__ import annotations

import asyncio
import os
import sys
from unittest import mock
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import typer
from conftest import api_ready
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner, Result

from events.provision import provision
from events.server import NatsServer
from orchestrator.cli import app
from orchestrator.cli_errors import VirtbusGroup

ROOT = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "orchestrator.cli"]
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


LEAVES = dict(leaves(typer.main.get_command(app)))
IDS = [" ".join(p) for p in LEAVES]


def kind(param: Any) -> Any:
    """The Python type a parameter converts to (`int | None` is int)."""
    ann = param.type_descriptor.annotation
    return next((a for a in get_args(ann) if a is not type(None)), ann)


def minimum(param: Any) -> Any:
    return param.type_descriptor.parameter_info.min


def numeric(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if isinstance(p, TyperOption) and kind(p) in (int, float)]


VALID = {"kind": "vm", "what": "vm", "url": "http://127.0.0.1:9/hook", "which": "all",
         "--for": "status=Running", "--size": "1Gi", "--timeout": "1"}  # fmt: skip


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


def assert_clean(result: Result | Any, *, code: int | None = None) -> str:
    """A failure as promised; returns the reason line."""
    out, err = result.stdout, result.stderr
    exit_code = result.exit_code if isinstance(result, Result) else result.code
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


def tripwire(*_: object, **__: object) -> None:
    raise AssertionError("the verb ran: click should have refused its input")


@pytest.fixture
def tripwired() -> Any:
    """The CLI with every verb's body replaced by a tripwire (a fresh copy per test)."""
    root = typer.main.get_command(app)
    for _, cmd in leaves(root):
        cmd.callback = tripwire
    return root


def invoke(root: Any, *args: str, env: dict[str, str] | None = None) -> Result:
    """`root` (a click command tree) as CliRunner runs a typer app: through its own `main`."""
    with mock.patch("typer.testing._get_command", lambda cmd: cmd):
        return CliRunner().invoke(root, list(args), env=env)


# --- parse level: click refuses, the verb never runs (exit 2) ----------------------------------


@pytest.mark.parametrize("path", list(LEAVES), ids=IDS)
def test_every_verb_refuses_missing_and_unknown_arguments(path: tuple[str, ...],
                                                          tripwired: Any) -> None:  # fmt: skip
    """Click refuses before the verb runs: an unknown flag, and each required parameter left out
    (one at a time), are usage errors naming what is wrong."""
    cmd = LEAVES[path]
    reason = assert_clean(invoke(tripwired, *path, *valid_args(cmd), "--no-such-flag"), code=2)
    assert reason == "Error: No such option: --no-such-flag"
    for p in (p for p in cmd.params if p.required):
        reason = assert_clean(invoke(tripwired, *path, *valid_args(cmd, skip=p.name)), code=2)
        assert reason.startswith("Error: Missing "), reason


def test_the_verbs_are_enumerated() -> None:
    """Guards the enumeration itself, so the parametrized tests cannot pass on an empty list."""
    assert {("start",), ("volume", "create"), ("webhook", "rotate-secret"),
            ("audit", "verify")} <= set(LEAVES)  # fmt: skip
    assert [p.opts[0] for p in numeric(LEAVES[("scale",)])] == ["--replicas"]


NEGATIVE_OK = {(("up",), "--port")}  # -1 picks a free port


@pytest.mark.parametrize("path", [p for p in LEAVES if numeric(LEAVES[p])],
                         ids=[i for p, i in zip(LEAVES, IDS, strict=True) if numeric(LEAVES[p])])  # fmt: skip
def test_every_number_refuses_words_and_nonsense(path: tuple[str, ...], tripwired: Any) -> None:
    """Each int/float option: `abc` is not a number, `-5` (a negative count, timeout, size) and
    anything below the option's minimum are out of range; click refuses all before the verb runs."""
    cmd = LEAVES[path]
    for p in numeric(cmd):
        flag = p.opts[0]
        bad = invoke(tripwired, *path, *valid_args(cmd, skip=p.name), flag, "abc")
        assert assert_clean(bad, code=2).startswith(f"Error: Invalid value for '{flag}'")
        assert (path, flag) in NEGATIVE_OK or minimum(p) is not None, f"{flag} has no minimum"
        low = min(-5, minimum(p) - 1) if minimum(p) is not None else -5
        if (path, flag) in NEGATIVE_OK:
            low = minimum(p) - 1
        bad = invoke(tripwired, *path, *valid_args(cmd, skip=p.name), flag, str(low))
        assert assert_clean(bad, code=2).startswith(f"Error: Invalid value for '{flag}'"), flag


def test_no_arguments_prints_the_help() -> None:
    """`virtbus` alone: typer's help on stdout and exit 2 (no_args_is_help), as before; stderr
    stays empty."""
    result = invoke(typer.main.get_command(app))
    assert (result.exit_code, result.stderr) == (2, "")
    assert "Usage: virtbus [OPTIONS] COMMAND [ARGS]..." in result.stdout


def test_usage_errors_are_one_plain_line_not_a_box() -> None:
    """Typer's Rich box would split the reason over lines; the root prints click's plain form."""
    result = invoke(typer.main.get_command(app), "scale", "vm", "--replicas", "abc")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--replicas': Input should be a valid integer, unable to parse "
        "string as an integer"
    )
    assert "╭" not in result.stderr


# --- the root's last resort: a bug is one line, its traceback on request ------------------------


def buggy_app() -> Any:
    bug = typer.Typer(cls=VirtbusGroup)

    @bug.command()
    def boom() -> None:
        raise RuntimeError("boom")

    @bug.command()
    def other() -> None:
        """Two verbs, so `boom` is a sub-command as in virtbus."""

    return typer.main.get_command(bug)


def test_an_unexpected_exception_is_one_line_and_its_traceback_is_opt_in() -> None:
    """A true bug (not a VirtbusError, OSError or NATS failure): one line naming its type, exit 1;
    with VIRTBUS_DEBUG=1 the traceback comes first."""
    quiet = invoke(buggy_app(), "boom", env={"VIRTBUS_DEBUG": ""})
    assert (quiet.exit_code, quiet.stdout) == (1, "")
    assert quiet.stderr == (
        "error: internal error: RuntimeError: boom (set VIRTBUS_DEBUG=1 for the traceback)\n"
    )
    loud = invoke(buggy_app(), "boom", env={"VIRTBUS_DEBUG": "1"})
    assert loud.exit_code == 1
    assert loud.stderr.startswith("Traceback (most recent call last):")
    assert loud.stderr.endswith('    raise RuntimeError("boom")\nRuntimeError: boom\n'
                                "error: internal error: RuntimeError: boom\n")  # fmt: skip
