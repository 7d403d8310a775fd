"""`get -w` for every kind and with `-l`, as a user runs it (a process left running, its output
read line by line): the listing first, then each row that changed, and nothing for the objects
the selector leaves out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import yaml
from clirun import CLI, ROOT, WAIT_S, Result, cli_env, virtbus
from driverstack import Stack
from manifests import vm

from bus.client import send
from events import commands as c


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


@asynccontextmanager
async def watching(st: Stack, *args: str) -> AsyncIterator[asyncio.StreamReader]:
    """`virtbus get ... -w` running; its stdout; stopped however the test ends."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "get", *args, "-w", "--server", st.url, cwd=ROOT, env=cli_env(None),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def line(out: asyncio.StreamReader) -> list[str]:
    got = await asyncio.wait_for(out.readline(), WAIT_S)
    assert got, "the watch ended"
    return got.decode().split()


async def test_a_watch_with_a_selector_prints_only_the_rows_it_selects(stack: Stack) -> None:
    await stack.node("node-a")
    for name, app in (("web", "web"), ("db", "db")):
        doc = vm(name, labels={"app": app})
        (await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(doc))).ok()
    async with watching(stack, "vms", "-l", "app=web") as out:
        assert await line(out) == ["NAME", "AGE", "STATUS", "READY"]
        first = await line(out)
        assert (first[0], first[2:]) == ("web", ["Stopped", "False"])
        # The db VM starts first: the watch prints nothing of it, then web's way to Running.
        await send(stack.nc, c.StartVM(name="db"))
        await stack.until("db", "Running")
        await send(stack.nc, c.StartVM(name="web"))
        rows = [await line(out)]
        while rows[-1][2:] != ["Running", "True"]:
            rows.append(await line(out))
    assert {r[0] for r in rows} == {"web"}


async def test_a_watch_of_claims_prints_a_new_claim_its_changes_and_its_end(stack: Stack) -> None:
    """A kind without a watch of its own (claims): listed again on each of its events, the rows
    that changed printed without the header; a deleted one once more, as it was last."""
    await stack.node("node-a")
    async with watching(stack, "pvc") as out:
        assert await line(out) == ["No", "resources", "found", "in", "default", "namespace."]
        made = await cli(stack, "volume", "create", "data", "--size", "16Mi", "--node", "node-a")
        made.ok()
        rows = [await line(out)]
        while rows[-1][1] != "Bound":
            rows.append(await line(out))
        assert {tuple(r[:1] + r[2:4]) for r in rows} == {("data", "16Mi", "node-a")}
        (await cli(stack, "delete", "pvc", "data")).ok()
        gone = await line(out)
        assert gone[:4] == ["data", "Bound", "16Mi", "node-a"]
