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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args
from unittest import mock

import nats
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


CLI_ROOT = typer.main.get_command(app)  # building it takes ~50 ms: one, shared, never altered
LEAVES = dict(leaves(CLI_ROOT))
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
         "--for": "status=Running", "--size": "1Gi", "--timeout": "1",
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


NUMERIC = [p for p in LEAVES if numeric(LEAVES[p])]


@pytest.mark.parametrize("path", NUMERIC, ids=[" ".join(p) for p in NUMERIC])
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
    result = invoke(CLI_ROOT)
    assert (result.exit_code, result.stderr) == (2, "")
    assert "Usage: virtbus [OPTIONS] COMMAND [ARGS]..." in result.stdout


def test_usage_errors_are_one_plain_line_not_a_box() -> None:
    """Typer's Rich box would split the reason over lines; the root prints click's plain form."""
    result = invoke(CLI_ROOT, "scale", "vm", "--replicas", "abc")
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


# --- files: each file a verb reads, missing, a directory, not UTF-8, empty ----------------------

FILE_OPTIONS = {(("apply",), "--filename"), (("image-upload",), "--image-path"),
                (("audit", "checkpoint"), "--key-file"), (("audit", "verify"), "--key-file"),
                (("up",), "--migrations")}  # fmt: skip
DIR_OPTIONS = {"--data-dir"}  # a directory the verb creates, not a file it reads


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (latin := tmp_path / "latin1.yaml").write_bytes(b"metadata:\n  name: caf\xe9\n")
    (empty := tmp_path / "empty.yaml").write_text("")
    (comments := tmp_path / "comments.yaml").write_text("# nothing here\n---\n---\n")
    return {"missing": tmp_path / "missing.yaml", "dir": tmp_path, "latin": latin,
            "empty": empty, "comments": comments}  # fmt: skip


def test_every_file_option_is_covered() -> None:
    """A new option that names a file must join FILE_OPTIONS (and the cases below)."""
    found = {
        (path, p.opts[0])
        for path, cmd in LEAVES.items()
        for p in cmd.params
        if (kind(p) is Path or p.name == "filename") and p.opts[0] not in DIR_OPTIONS
    }
    assert found == FILE_OPTIONS


def test_apply_names_a_file_it_cannot_read_and_refuses_an_empty_one(files: dict[str, Path]) -> None:
    """apply reads and parses -f before it connects (the bus here is unreachable, and never
    reached): a missing file, a directory, non-UTF-8 bytes are named with kubectl's words; a file
    of no objects (empty, or only comments and `---`, also on stdin) is kubectl's `no objects
    passed to apply`."""
    root = CLI_ROOT
    cases = {
        "missing": f'error: the path "{files["missing"]}" does not exist',
        "dir": f'error: the path "{files["dir"]}" is a directory; give a manifest file',
        "latin": f'error: the path "{files["latin"]}" is not UTF-8 text (byte 0xe9 at offset 21)',
        "empty": "error: no objects passed to apply",
        "comments": "error: no objects passed to apply",
    }
    for case, message in cases.items():
        result = invoke(root, "apply", "-f", str(files[case]), "--server", UNREACHABLE)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", message + "\n"), case
    with mock.patch("typer.testing._get_command", lambda cmd: cmd):
        piped = CliRunner().invoke(root, ["apply", "-f", "-", "-s", UNREACHABLE], input="---\n")
    assert (piped.exit_code, piped.stderr) == (1, "error: no objects passed to apply\n")


KEY_FILE_CASES = [("missing", "cannot read {}: No such file or directory"),
                  ("dir", "cannot read {}: Is a directory"), ("empty", "{} is empty")]  # fmt: skip
MIGRATIONS_CASES = [("missing", "No such file or directory"), ("dir", "Is a directory"),
                    ("latin", "not UTF-8 text (invalid continuation byte at byte 21)")]  # fmt: skip


def test_other_file_options_name_the_file(files: dict[str, Path]) -> None:
    """--image-path must be a file; --key-file must be readable and not empty; --migrations must be
    readable UTF-8 YAML. Each is checked before the bus is reached (it is unreachable here)."""
    root = CLI_ROOT
    upload = ["image-upload", "--pvc-name", "x", "--pvc-size", "1Gi", "-s", UNREACHABLE]
    for case in ("missing", "dir"):
        result = invoke(root, *upload, "--image-path", str(files[case]))
        assert (result.exit_code, result.stderr) == (
            1, f"error: image-path: {files[case]} is not a file\n")  # fmt: skip
    for verb in (["audit", "checkpoint"], ["audit", "verify"]):
        for case, why in KEY_FILE_CASES:
            result = invoke(root, *verb, "--key-file", str(files[case]), "-s", UNREACHABLE)
            expected = f"error: --key-file: {why.format(files[case])}\n"
            assert (result.exit_code, result.stderr) == (2, expected), (verb, case)
    for case, why in MIGRATIONS_CASES:
        result = invoke(root, "up", "--migrations", str(files[case]), "--server", UNREACHABLE)
        expected = f"error: --migrations: migrations: {files[case]}: {why}\n"
        assert (result.exit_code, result.stderr) == (2, expected), case


# --- the bus: unreachable, as real subprocesses ------------------------------------------------


async def run_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("VIRTBUS_NATS_URL", "VIRTBUS_DEBUG")},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Ran:
    """A subprocess's outcome, shaped like CliRunner's Result for assert_clean."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.exit_code, self.stdout, self.stderr = code, code, out, err


ON_THE_BUS = [p for p, cmd in LEAVES.items() if any("--server" in q.opts for q in cmd.params)]
# A sample, one per area: each run waits out nats-py's retries (~1.5 s) and a process start; the
# bad-names test below runs every verb's real path against a live bus.
SAMPLE = [("start",), ("get",), ("apply",), ("volume", "get"), ("webhook", "list"),
          ("audit", "verify"), ("history",), ("up",)]  # fmt: skip
EXTRA = {("up",): ["--nodes", "0"]}


async def test_verbs_on_an_unreachable_bus_say_so_in_one_line(tmp_path: Path) -> None:
    """Verbs pointed at a port where nothing listens, run as real processes: exit 1 and
    `error: cannot reach NATS at URL: <the refusal>`, the cause rather than nats-py's summary; one
    also with a host name that does not resolve (`--server not-a-url`)."""
    assert set(SAMPLE) <= set(ON_THE_BUS)

    async def one(path: tuple[str, ...], server: str) -> Ran:
        args = [*path, *valid_args(LEAVES[path]), *EXTRA.get(path, []), "--server", server]
        if any(p.opts[0] == "--data-dir" for p in LEAVES[path].params):
            args += ["--data-dir", str(tmp_path / "-".join(path))]
        return Ran(*await run_cli(*args, cwd=tmp_path))

    cases = [*((p, UNREACHABLE) for p in SAMPLE), (("get",), "not-a-url")]
    exact = [  # and what a terminal shows for a file apply cannot read, and for a usage error
        run_cli("apply", "-f", "missing.yaml", "-s", UNREACHABLE, cwd=tmp_path),
        run_cli("scale", "rs", "--replicas", "abc", cwd=tmp_path),
    ]
    *results, missing, usage = await asyncio.gather(*(one(p, s) for p, s in cases), *exact)
    for (path, server), ran in zip(cases, results, strict=True):
        reason = assert_clean(ran, code=1)
        assert reason.startswith(f"error: cannot reach NATS at {server}: "), (path, reason)
        assert "no servers available" not in reason  # nats-py's summary, not the cause
    assert missing == (1, "", 'error: the path "missing.yaml" does not exist\n')
    assert usage == (2, "", "Usage: python -m orchestrator.cli scale [OPTIONS] {name}\n"
                     "Try 'python -m orchestrator.cli scale --help' for help.\n\n"
                     "Error: Invalid value for '--replicas': Input should be a valid integer, "
                     "unable to parse string as an integer\n")  # fmt: skip


# --- bad names on a live bus: every verb's real path -------------------------------------------


@pytest.fixture(scope="module")
async def bus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """One bus and orchestrator (its own process, so in-process CLI calls find it answering while
    the test's loop is idle) for the module; no nodes: bad input is refused before any node."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    async with NatsServer(data_dir=tmp / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "--server", server.url,
            "--data-dir", str(tmp / "orchestrator"), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await api_ready(nc)
            yield server.url
        finally:
            proc.terminate()
            await proc.wait()
            await nc.close()


BAD_NAMES = ["Bad_Name!", "a" * 300, "vm-ünï\x01", "*.>", ""]
NAME_OPTIONS = {"--namespace", "--pvc-name", "--volume-name", "--restore-name", "--to", "--node",
                "--name"}  # fmt: skip
NOT_NAMES = {"kind", "what", "which", "url"}  # a kind or a URL: the verb's own checks
OFF_THE_BUS = {("up",), ("schema",), ("admin", "rebuild-projections")}


def named(cmd: Any) -> list[Any]:
    """The parameters of `cmd` that carry a resource name."""
    return [p for p in cmd.params if kind(p) is str and (
        (isinstance(p, TyperArgument) and p.name not in NOT_NAMES)
        or (isinstance(p, TyperOption) and p.opts[0] in NAME_OPTIONS))]  # fmt: skip


NAMED = [p for p in LEAVES if p not in OFF_THE_BUS and p[0] != "bench" and named(LEAVES[p])]


@pytest.mark.parametrize("path", NAMED, ids=[" ".join(p) for p in NAMED])
def test_every_name_is_checked(path: tuple[str, ...], bus: str) -> None:
    """Each name a verb takes (VM, snapshot, volume, node, webhook, namespace...), given a bad one
    (not DNS-1123, 300 characters, unicode and a control character, a NATS wildcard or token
    separator, empty): refused with one line, exit 1 (the orchestrator's reason) or 2 (checked
    before the bus); never accepted, never a traceback."""
    cmd = LEAVES[path]
    extra = EXTRA.get(path, [])
    for p in named(cmd):
        for bad in BAD_NAMES:
            args = [a for a in valid_args(cmd, skip=p.name)]
            if isinstance(p, TyperArgument):  # put it where the argument goes
                position = [q.name for q in cmd.params if q.required or q is p].index(p.name)
                args.insert(position, bad)
            else:
                args += [p.opts[0], bad]
            result = invoke(CLI_ROOT, *path, *args, *extra, "--server", bus)
            try:
                assert_clean(result)
            except AssertionError as e:
                raise AssertionError(f"{path} {p.name}={bad!r}: {e}") from None


NONSENSE = [  # (arguments, exit code, the reason line), each checked where the comment says
    # by the orchestrator's validation of the command (exit 1):
    (["volume", "create", "v1", "--size", "1Zi"], 1,
     "error: size: '1Zi' is not a quantity (like 2G, 512Mi, 1.5Gi or 1024)"),
    (["volume", "create", "v1", "--size", "-1Gi"], 1, "error: size: '-1Gi' must not be negative"),
    (["volume", "create", "v1", "--size", "0"], 1,
     "error: size: '0' is below the minimum volume size of 1Mi"),
    (["webhook", "add", "ftp://x/y"], 1, "error: url: 'ftp://x/y' must be http:// or https://"),
    (["webhook", "add", "http://127.0.0.1:9/x", "--types", ""], 1,
     "error: types: at least one event type pattern is required"),
    (["webhook", "add", "http://127.0.0.1:9/x", "--secret", "nope"], 1,
     "error: secret: a secret starts with 'whsec_'"),
    (["stop", "x", "--grace-period", "99999999999999999999"], 1,
     "error: invalid command: Expected `int` <= 86400 - at `$.grace_period_seconds`"),
    (["start", "x"], 1, 'error: virtualmachine.kubevirt.io "x" not found in namespace "default"'),
    # by the CLI before the bus (exit 1 from the verb, 2 for its usage):
    (["image-upload", "--pvc-name", "v", "--pvc-size", "1Gi"], 1,
     "error: image-path: give exactly one of --image-path and --url"),
    (["image-upload", "--pvc-name", "v", "--pvc-size", "1Gi", "--url", "not-a-url"], 1,
     "error: url: 'not-a-url' is not an http(s) URL"),
    (["apply", "-f", str(ROOT / "README.md")], 1,
     "error: yaml: line 4, column 81: mapping values are not allowed here"),
    (["get", "widgets"], 1, 'error: the server doesn\'t have a resource type "widgets"'),
    (["get", "vms", "-o", "bogus"], 2, "error: -o 'bogus': use wide, json or yaml"),
    (["describe", "pod", "x"], 2, "error: describe pod: only vm is supported"),
    (["delete", "widget", "x"], 2,
     "error: delete widget: use a VM name, vm NAME or vmsnapshot NAME"),
    (["wait", "vm", "x", "--for", "bogus"], 2,
     "error: --for: 'bogus' is not understood; use status=X, phase=X, condition=X or delete"),
    (["history", "x", "--since", "notatime"], 2, "error: --since: 'notatime' is neither an RFC "
     "3339 time (2026-11-27T08:00:00Z) nor a duration (10m, 1h30m, 2d)"),
    (["audit", "verify", "-o", "xml"], 2, "error: -o 'xml': use table or json"),
    (["get", "vms", "x", "-n", "Bad_NS"], 2, "Error: Invalid value for '--namespace' / '-n': "
     "'Bad_NS' is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
     "with a letter or digit)"),
    (["volume", "get", ""], 2, "error: name: an empty name; leave it out to list all"),
    # by click's parsing (exit 2):
    (["scale", "rs", "--replicas", "100000"], 2,
     "Error: Invalid value for '--replicas': Input should be less than or equal to 10000"),
    (["addvolume", "x", "--volume-name", "v", "--disk-type", "floppy"], 2,
     "Error: Invalid value for '--disk-type': Value error, 'floppy' is not one of 'disk', 'lun'."),
    (["webhook", "add", "http://127.0.0.1:9/x", "--since", "yesterday"], 2,
     "Error: Invalid value for '--since': Input should be a valid datetime or date, input is too "
     "short"),
]  # fmt: skip


def test_nonsense_is_refused_with_its_reason(bus: str) -> None:
    """Well-formed but meaningless input (a size of 1Zi, a URL that is not HTTP, an unknown kind or
    output, a time that is not one...): the exact reason, on one line, with the exit code above."""
    for args, code, reason in NONSENSE:
        result = invoke(CLI_ROOT, *args, "--server", bus)
        assert (result.exit_code, assert_clean(result), result.stdout) == (code, reason, ""), args
