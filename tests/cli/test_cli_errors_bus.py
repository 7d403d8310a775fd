"""Bad input on the bus side: verbs pointed at an unreachable bus (real processes, so what a
terminal shows is checked), every name a verb takes given a bad one, and well-formed nonsense,
against one bus and orchestrator shared by the module. See `test_cli_errors.py` for the promise.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from cli_cases import (
    CLI,
    CLI_ROOT,
    LEAVES,
    ROOT,
    UNREACHABLE,
    VALID,
    assert_clean,
    invoke,
    kind,
    valid_args,
)
from typer.core import TyperArgument, TyperOption
from waits import api_ready

from bus.provision import provision
from bus.server import NatsServer

# --- the bus: unreachable, as real subprocesses ------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    """The CLI as a terminal runs it (no VIRTBUS_NATS_URL, no VIRTBUS_DEBUG)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
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
        self.exit_code, self.stdout, self.stderr = code, out, err


ON_THE_BUS = [p for p, cmd in LEAVES.items() if any("--server" in q.opts for q in cmd.params)]
# A sample, one per area: each run waits out nats-py's retries (~1.5 s) and a process start; the
# bad-names test below runs every verb's real path against a live bus.
SAMPLE = [("start",), ("get",), ("apply",), ("volume", "get"), ("webhook", "list"),
          ("audit", "verify"), ("history",), ("up",)]  # fmt: skip
# (apply's -f is not required since -k came: one of them is)
EXTRA = {("up",): ["--nodes", "0"], ("apply",): ["-f", VALID["--filename"]]}


async def test_verbs_on_an_unreachable_bus_say_so_in_one_line(tmp_path: Path) -> None:
    """Verbs pointed at a port where nothing listens, run as real processes: exit 1 and
    `error: cannot reach NATS at URL: <the refusal>`, the cause rather than nats-py's summary; one
    also with a host name that does not resolve (`--server not-a-url`)."""
    assert set(SAMPLE) <= set(ON_THE_BUS)

    async def one(path: tuple[str, ...], server: str) -> Ran:
        args = [*path, *valid_args(LEAVES[path]), *EXTRA.get(path, []), "--server", server]
        if any(p.opts[0] == "--data-dir" for p in LEAVES[path].params):
            args += ["--data-dir", str(tmp_path / "-".join(path))]
        return Ran(*await run_cli(*args))

    cases = [*((p, UNREACHABLE) for p in SAMPLE), (("get",), "not-a-url")]
    exact = [  # and what a terminal shows for a file apply cannot read, and for a usage error
        run_cli("apply", "-f", "missing.yaml", "-s", UNREACHABLE),
        run_cli("scale", "rs", "--replicas", "abc"),
    ]
    *results, missing, usage = await asyncio.gather(*(one(p, s) for p, s in cases), *exact)
    for (path, server), ran in zip(cases, results, strict=True):
        reason = assert_clean(ran, code=1)
        assert reason.startswith(f"error: cannot reach NATS at {server}: "), (path, reason)
        assert "no servers available" not in reason  # nats-py's summary, not the cause
    assert missing == (1, "", 'error: the path "missing.yaml" does not exist\n')
    assert usage == (2, "", "Usage: python -m virtbus scale [OPTIONS] WHAT [NAME]\n"
                     "Try 'python -m virtbus scale --help' for help.\n\n"
                     "Error: Invalid value for '--replicas': 'abc' is not a valid integer "
                     "range.\n")  # fmt: skip


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
    (["get", "vms", "-o", "bogus"], 2,
     "error: -o 'bogus': use wide, json, yaml, name or jsonpath=TEMPLATE"),
    (["describe", "pod", "x"], 1, 'error: the server doesn\'t have a resource type "pod"'),
    (["delete", "widget", "x"], 1, 'error: the server doesn\'t have a resource type "widget"'),
    (["wait", "vm", "x", "--for", "bogus"], 2,
     "error: --for: 'bogus' is not understood; use condition=X, jsonpath={.path}=VALUE, delete, "
     "create, status=X or phase=X"),
    (["get", "vm/x", "y"], 2, "error: there is no need to specify a resource type as a separate "
     "argument when passing arguments in resource/name form (e.g. 'virtbus get "
     "resource/<resource_name>' instead of 'virtbus get resource resource/<resource_name>')"),
    (["get", "vms", "-o", "jsonpath={.items[0}"], 2,
     "error: error parsing jsonpath {.items[0}, unclosed array expect ]"),
    (["get", "vms", "-l", "a in b"], 2, "error: -l 'a in b': cannot read 'a in b': use "
     "key=value, key!=value, key in (a,b), key notin (a,b), key or !key"),
    (["get", "vms", "x", "-l", "a=b"], 2,
     "error: name cannot be provided when a selector is specified"),
    (["delete", "node", "n"], 1, "error: deleting nodes is not supported by virtbus: a node is "
     "its worker: stop the worker, or `virtbus drain` it"),
    (["patch", "vm", "x", "-p", "{}"], 1, "error: --type strategic: the body of the request was in "
     "an unknown format - accepted media types include: application/json-patch+json, "
     "application/merge-patch+json (use --type merge or --type json)"),
    (["patch", "vm", "x", "--type", "merge", "-p", "{"], 1, "error: --patch: not JSON: Expecting "
     "property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (["patch", "vmi", "x", "--type", "merge", "-p", "{}"], 1, "error: patching "
     "virtualmachineinstances.kubevirt.io is not supported by virtbus: patch the virtualmachine "
     "or virtualmachineinstancereplicaset that owns it"),
    (["delete", "vm", "x", "--cascade=orphan"], 2, "error: --cascade=orphan: virtbus deletes "
     "what an object owns with it (a VM's instance, a replica set's or pool's VMs); an orphan is "
     "not left running"),
    (["delete", "vm", "x", "--cascade", "sideways"], 2,
     'error: --cascade=sideways: must be "background", "orphan", or "foreground"'),
    (["restart", "x", "--force"], 2,
     "error: --force: restarting by force needs --grace-period 0, as with virtctl"),
    (["pause", "pod", "x"], 2, "error: pause pod: use pause vm NAME, pause vmi NAME or pause NAME"),
    (["image-upload", "dv", "d", "--image-path", "x.img"], 2, "error: --size is required (or "
     "--no-create, to upload into a claim made for it)"),
    (["image-upload", "pvc", "d", "--size", "1Gi", "--archive-path", "d.img"], 2,
     "error: --archive-path: 'd.img' is not a .tar archive"),
    (["image-upload", "pvc", "d", "--pvc-name", "e", "--size", "1Gi"], 2,
     "error: --pvc-name 'e' names another volume than pvc 'd'"),
    (["history", "x", "--since", "notatime"], 2, "error: --since: 'notatime' is neither an RFC "
     "3339 time (2026-11-27T08:00:00Z) nor a duration (10m, 1h30m, 2d)"),
    (["audit", "verify", "-o", "xml"], 2, "error: -o 'xml': use table or json"),
    (["get", "vms", "x", "-n", "Bad_NS"], 2, "Error: Invalid value for '--namespace' / '-n': "
     "'Bad_NS' is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
     "with a letter or digit)"),
    (["volume", "get", ""], 2, "error: name: an empty name; leave it out to list all"),
    # by click's parsing (exit 2):
    (["scale", "rs", "--replicas", "100000"], 2,
     "Error: Invalid value for '--replicas': 100000 is not in the range 0<=x<=10000."),
    (["addvolume", "x", "--volume-name", "v", "--disk-type", "floppy"], 2,
     "Error: Invalid value for '--disk-type': 'floppy' is not one of 'disk', 'lun'."),
    (["webhook", "add", "http://127.0.0.1:9/x", "--since", "yesterday"], 2,
     "Error: Invalid value for '--since': 'yesterday' does not match the formats '%Y-%m-%d', "
     "'%Y-%m-%dT%H:%M:%S', '%Y-%m-%d %H:%M:%S'."),
]  # fmt: skip


def test_nonsense_is_refused_with_its_reason(bus: str) -> None:
    """Well-formed but meaningless input (a size of 1Zi, a URL that is not HTTP, an unknown kind or
    output, a time that is not one...): the exact reason, on one line, with the exit code above."""
    for args, code, reason in NONSENSE:
        result = invoke(CLI_ROOT, *args, "--server", bus)
        assert (result.exit_code, assert_clean(result), result.stdout) == (code, reason, ""), args
