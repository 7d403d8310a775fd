"""Bad input never stops the CLI with a traceback: every verb, fed missing, malformed and
nonsensical arguments, exits 1 (rejected, `error: <reason>`) or 2 (usage, click's `Error: <reason>`)
with its reason on one line of stderr, and no JSON on stdout.

Here the cases that need no bus. Parse-level ones run in-process (typer's CliRunner goes through
the same root `main` as a terminal, `virtctl/cli_errors.py`, so exit codes and stderr are the
same) with every verb's body replaced by a tripwire: click must refuse the input before the verb
runs. Files a verb reads are checked before it connects. `test_cli_errors_bus.py` has the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from cli_cases import (
    CLI_ROOT,
    IDS,
    LEAVES,
    UNREACHABLE,
    assert_clean,
    invoke,
    kind,
    leaves,
    minimum,
    numeric,
    valid_args,
)
from nats.errors import ConnectionClosedError as NatsConnectionClosed

from events.errors import VirtbusError
from virtbus.cli import app
from virtctl.cli_errors import VirtbusGroup


def tripwire(*_: object, **__: object) -> None:
    raise AssertionError("the verb ran: click should have refused its input")


@pytest.fixture
def tripwired() -> Any:
    """The CLI with every verb's body replaced by a tripwire (a fresh copy per test)."""
    root = typer.main.get_command(app)
    for _, cmd in leaves(root):
        cmd.callback = tripwire
    return root


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
        "Error: Invalid value for '--replicas': 'abc' is not a valid integer range."
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
                (("create",), "--filename"), (("delete",), "--filename"),
                (("image-upload",), "--archive-path"),
                (("audit", "checkpoint"), "--key-file"), (("audit", "verify"), "--key-file"),
                (("up",), "--migrations"), (("deploy", "secrets"), "--node-creds")}  # fmt: skip
DIR_OPTIONS = {"--data-dir"}  # a directory the verb creates, not a file it reads
# files a verb writes, never over an existing one (tests/cli/test_auth.py says so)
WRITTEN = {(("auth", "add-user"), "-o"), (("auth", "add-node"), "-o"),
           (("deploy", "secrets"), "-o")}  # fmt: skip
BUS_FILE_OPTIONS = {"--creds", "--tls-ca", "--tls-cert", "--tls-key"}  # every verb on the bus


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
    assert {f for f in found if f[1] not in BUS_FILE_OPTIONS} == FILE_OPTIONS | WRITTEN
    bus_verbs = {
        path for path, cmd in LEAVES.items() if any(p.name == "server" for p in cmd.params)
    }
    assert {f for f in found if f[1] in BUS_FILE_OPTIONS} == {
        (path, option) for path in bus_verbs for option in BUS_FILE_OPTIONS
    }


@pytest.mark.parametrize("verb", ["apply", "create", "delete"])
def test_manifest_verbs_name_a_file_they_cannot_read_and_refuse_an_empty_one(
    files: dict[str, Path], verb: str
) -> None:
    """apply, create and delete read and parse -f before they connect (the bus here is
    unreachable, and never reached): a missing file, a directory, non-UTF-8 bytes are named with
    kubectl's words; a file of no objects (empty, or only comments and `---`, also on stdin) is
    kubectl's `no objects passed to apply`."""
    root = CLI_ROOT
    cases = {
        "missing": f'error: the path "{files["missing"]}" does not exist',
        "dir": f'error: the path "{files["dir"]}" is a directory; give a manifest file',
        "latin": f'error: the path "{files["latin"]}" is not UTF-8 text (byte 0xe9 at offset 21)',
        "empty": f"error: no objects passed to {verb}",
        "comments": f"error: no objects passed to {verb}",
    }
    for case, message in cases.items():
        result = invoke(root, verb, "-f", str(files[case]), "--server", UNREACHABLE)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", message + "\n"), case
    piped = invoke(root, verb, "-f", "-", "-s", UNREACHABLE, stdin="---\n")
    assert (piped.exit_code, piped.stderr) == (1, f"error: no objects passed to {verb}\n")
    latin = invoke(root, verb, "-f", "-", "-s", UNREACHABLE, stdin=b"kind: caf\xe9\n")
    assert (latin.exit_code, latin.stderr) == (
        1, "error: stdin is not UTF-8 text (byte 0xe9 at offset 9)\n")  # fmt: skip


KEY_FILE_CASES = [("missing", "cannot read {}: No such file or directory"),
                  ("dir", "cannot read {}: Is a directory"), ("empty", "{} is empty")]  # fmt: skip
MIGRATIONS_CASES = [("missing", "No such file or directory"), ("dir", "Is a directory"),
                    ("latin", "not UTF-8 text (invalid continuation byte at byte 21)")]  # fmt: skip


def test_other_file_options_name_the_file(files: dict[str, Path]) -> None:
    """--image-path must be a file; --key-file must be readable and not empty; --migrations must be
    readable UTF-8 YAML; --node-creds must be a readable node's .creds; -o of `deploy secrets`
    never overwrites. Each is checked before the bus is reached (it is unreachable here)."""
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
    secrets = ["deploy", "secrets", "--data-dir", str(files["dir"] / "stack")]
    (latin := files["dir"] / "latin.creds").write_bytes(files["latin"].read_bytes())
    (empty := files["dir"] / "empty.creds").write_text("")
    (folder := files["dir"] / "folder.creds").mkdir()
    for path, why in [
        (files["dir"] / "gone.creds", "cannot read {}: No such file or directory"),
        (folder, "cannot read {}: Is a directory"),
        (files["empty"], "{}: a node's file is named <node>.creds"),
        (latin, "{} is not a NATS .creds file (a user JWT and its seed)"),
        (empty, "{} is not a NATS .creds file (a user JWT and its seed)"),
    ]:
        result = invoke(root, *secrets, "--node-creds", str(path))
        assert (result.exit_code, result.stderr) == (2, f"error: {why.format(path)}\n")
    result = invoke(root, *secrets, "-o", str(files["latin"]))  # a file that exists stays as it is
    assert (result.exit_code, result.stderr) == (
        2, f"error: -o: {files['latin']} exists; remove it or name another file\n")  # fmt: skip
    assert files["latin"].read_bytes() == b"metadata:\n  name: caf\xe9\n"


BUS_FILE_CASES = {
    "--creds": [("missing", "cannot read {}: No such file or directory"),
                ("dir", "cannot read {}: Is a directory"),
                ("latin", "{} is not a NATS .creds file (a user JWT and its seed)"),
                ("empty", "{} is not a NATS .creds file (a user JWT and its seed)")],
    "--tls-ca": [("missing", "cannot read {}: No such file or directory"),
                 ("dir", "cannot read {}: Is a directory"),
                 ("latin", "{} holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
                 ("empty", "{} holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)")],
}  # fmt: skip


@pytest.mark.parametrize("verb", [["get", "vms"], ["bench", "log"], ["webhook", "list"]])
def test_the_bus_options_name_the_file_before_the_bus_is_reached(
    files: dict[str, Path], verb: list[str]
) -> None:
    """--creds must be a .creds file and --tls-ca a PEM certificate, on every verb (one of each
    kind of verb here: a plain one, a benchmark, a group's): a usage error before any connection
    (the bus is unreachable here)."""
    for option, cases in BUS_FILE_CASES.items():
        for case, why in cases:
            result = invoke(CLI_ROOT, *verb, option, str(files[case]), "--server", UNREACHABLE)
            expected = f"error: {option}: {why.format(files[case])}\n"
            assert (result.exit_code, result.stderr) == (2, expected), (option, case)
    # a client certificate: both files or neither, and they must make a certificate and its key
    for args, why in (
        (["--tls-cert", str(files["empty"])], "--tls-cert and --tls-key: give both (a client "
                                              "certificate and its key)"),
        (["--tls-cert", str(files["missing"]), "--tls-key", str(files["empty"])],
         f"--tls-cert: cannot use {files['missing']} with {files['empty']}: No such file or "
         "directory"),
        (["--tls-cert", str(files["latin"]), "--tls-key", str(files["latin"])],
         f"--tls-cert: cannot use {files['latin']} with {files['latin']}: not a PEM certificate "
         "and its private key"),
    ):  # fmt: skip
        result = invoke(CLI_ROOT, *verb, *args, "--server", UNREACHABLE)
        assert (result.exit_code, result.stderr) == (2, f"error: {why}\n"), args


RAISED = [  # what a verb raises -> the line the root prints (exit 1 for each)
    (FileNotFoundError(2, "No such file or directory", "/x/y.yaml"),
     "error: /x/y.yaml: No such file or directory"),
    (ConnectionResetError(104, "Connection reset by peer"), "error: Connection reset by peer"),
    (NatsConnectionClosed(), "error: the bus failed: nats: connection closed"),
    (VirtbusError("first line\n  second line"), "error: first line second line"),
    (b"\xff".decode, "error: not UTF-8 text: invalid start byte at byte 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raised", "line"), RAISED, ids=["file", "socket", "bus", "virtbus", "decode"]
)
def test_expected_failures_are_one_line_without_the_debug_hint(raised: Any, line: str) -> None:
    """The root's safety net for failures that are not bugs (a file, a socket, the bus, our own
    errors, a decode a verb did not catch): one `error: ` line, no debug hint, exit 1."""
    bug = typer.Typer(cls=VirtbusGroup)

    @bug.command()
    def fail() -> None:
        if callable(raised):
            raised()  # raises as it is called (a UnicodeDecodeError is awkward to build)
        raise raised

    @bug.command()
    def other() -> None:
        """A second verb, so `fail` is a sub-command as in virtbus."""

    result = invoke(typer.main.get_command(bug), "fail", env={"VIRTBUS_DEBUG": ""})
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", line + "\n")


@pytest.mark.parametrize(
    "path", [(), ("create", "vm"), ("volume", "create"), ("memory-dump", "get")]
)
def test_dash_h_is_help_as_in_virtctl_and_kubectl(path: tuple[str, ...]) -> None:
    short, long = invoke(CLI_ROOT, *path, "-h"), invoke(CLI_ROOT, *path, "--help")
    assert (short.exit_code, short.stdout) == (0, long.stdout)
    assert "Usage: " in short.stdout
