"""The migration and node-maintenance verbs: migrate (with --watch), migrate-cancel, drain,
uncordon. Registered on the main `virtbus` app by importing this module (cli.py does)."""

from __future__ import annotations

from typing import Annotated

import typer

from events import commands as c
from orchestrator.cli import NameArg, NsOpt, ServerOpt, _actor, _lifecycle, app


@app.command("migrate-cancel")
def migrate_cancel(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Abort a VM's migration in progress (the VM stays on its source)."""
    _lifecycle(c.CancelMigration(name=name, namespace=namespace, actor=_actor()), server)


NodeArg = Annotated[str, typer.Argument(help="node name")]


@app.command()
def drain(node: NodeArg, server: ServerOpt = None) -> None:
    """Cordon a node and move every VM off it per its evictionStrategy."""
    _lifecycle(c.DrainNode(name=node, actor=_actor()), server)


@app.command()
def uncordon(node: NodeArg, server: ServerOpt = None) -> None:
    """Make a cordoned or drained node schedulable again."""
    _lifecycle(c.UncordonNode(name=node, actor=_actor()), server)
