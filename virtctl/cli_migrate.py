"""The migration and node-maintenance verbs: migrate (with --watch), migrate-cancel, drain,
uncordon. `register` adds them to the `virtbus` app; `get migrations` goes through `get`
(`cli_verbs.py`), and both end in `migrations.py`; `bench migrate` is in `bench/cli.py`."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer

from bus.client import query, send, session
from bus.connect import server_url
from events import commands as c
from events.protocol import Query
from events.state import PENDING, RUNNING, SCHEDULED, SCHEDULING
from virtctl.cli_common import NameArg, NsOpt, ServerOpt, seconds
from virtctl.cli_common import actor as _actor
from virtctl.cli_common import finish as _finish
from virtctl.cli_common import lifecycle as _lifecycle
from virtctl.cli_common import run as _run


def migrate_cancel(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Abort a VM's migration in progress (the VM stays on its source)."""
    _lifecycle(c.CancelMigration(name=name, namespace=namespace, actor=_actor()), server)


_ON_NODE = (PENDING, SCHEDULING, SCHEDULED, RUNNING)
NodeArg = Annotated[str, typer.Argument(help="node name")]


def drain(
    node: NodeArg,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            parser=seconds,
            metavar="DURATION",
            help="how long to wait for the node to empty (5m, 300...); 0: no wait",
        ),
    ] = 300.0,
    server: ServerOpt = None,
) -> None:
    """Cordon a node and move every VM off it per its evictionStrategy (like kubectl drain)."""
    _finish(_run(_drain(server_url(server), node=node, timeout_s=timeout)))


async def _drain(url: str, *, node: str, timeout_s: float) -> int:
    async with session(url) as nc:
        await send(nc, c.DrainNode(name=node, actor=_actor()))
        typer.echo(f"node/{node} cordoned")
        deadline, seen = time.monotonic() + timeout_s, set[str]()
        while timeout_s:
            vms = (await query(nc, Query(what="vms"))).vms
            on = [s for s in vms if s.node == node and s.phase in _ON_NODE]
            for s in on:
                if (key := f"{s.namespace}/{s.name}") not in seen:
                    seen.add(key)
                    typer.echo(f"evicting virtualmachineinstance {key}")
            if not on:
                break
            if time.monotonic() > deadline:
                names = ", ".join(f"{s.namespace}/{s.name}" for s in on)
                typer.echo(
                    f"error: node/{node} still runs {names} after {timeout_s:.0f}s", err=True
                )
                return 1
            await asyncio.sleep(0.5)
    typer.echo(f"node/{node} drained")
    return 0


def uncordon(node: NodeArg, server: ServerOpt = None) -> None:
    """Make a cordoned or drained node schedulable again."""
    _lifecycle(c.UncordonNode(name=node, actor=_actor()), server)


def migrate(
    name: NameArg,
    namespace: NsOpt = "default",
    to: Annotated[
        str | None, typer.Option("--to", help="target node (default: the scheduler's)")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="show its progress until it ends")
    ] = False,
    server: ServerOpt = None,
) -> None:
    """Migrate a running VM (live between QEMU nodes, cold on the test driver); a stopped VM's
    definition moves to the target node."""
    if not watch:
        cmd = c.MigrateVM(name=name, namespace=namespace, target_node=to, actor=_actor())
        _lifecycle(cmd, server)
        return
    from virtctl.migrations import migrate_and_watch

    _finish(_run(migrate_and_watch(server_url(server), name=name, namespace=namespace, to=to,
                                   actor=_actor())))  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add these verbs to the `virtbus` app."""
    app.command("migrate-cancel")(migrate_cancel)
    app.command()(drain)
    app.command()(uncordon)
    app.command()(migrate)
