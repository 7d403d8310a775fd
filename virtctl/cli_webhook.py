"""`virtbus webhook add|list|rm|deliveries|redeliver|rotate-secret`: the typer verbs.

`virtbus/cli.py` adds `webhook_app` to the `virtbus` app; the work is in `virtctl/webhooks.py`.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import datetime
from typing import Annotated, Any

import typer

from bus.connect import server_url
from events import commands as c
from virtctl.cli_common import ServerOpt, finish, run, usage
from virtctl.cli_common import actor as _actor

webhook_app = typer.Typer(help="HTTP endpoints that subscribe to the log (Standard Webhooks).")

OutOpt = Annotated[str, typer.Option("-o", "--output", help="table, json or yaml")]
IdArg = Annotated[str, typer.Argument(help="the webhook's name (its ID)")]


def _run(coro: Coroutine[Any, Any, int]) -> None:
    finish(run(coro))


def _output(output: str) -> str:
    if output not in ("table", "json", "yaml", ""):
        raise usage(f"-o {output!r}: use table, json or yaml")
    return output


@webhook_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="the endpoint, http:// or https://")],
    types: Annotated[
        list[str], typer.Option("--types", help="CloudEvents type globs (repeat, or a,b)")
    ] = ["io.virtbus.*"],  # noqa: B006 (typer reads it, never mutates it)
    vm: Annotated[str, typer.Option("--vm", help="VM name glob, or ns/name glob")] = "*",
    since: Annotated[
        datetime | None, typer.Option("--since", help="deliver events from this time on")
    ] = None,
    from_start: Annotated[bool, typer.Option("--from-start", help="every event ever")] = False,
    secret: Annotated[
        str | None, typer.Option("--secret", help="whsec_<base64>; one is made if not given")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="the ID (default: generated)")] = None,
    output: OutOpt = "table",
    server: ServerOpt = None,
) -> None:
    """Subscribe URL to the events whose type matches --types (and VM --vm)."""
    from events.envelope import new_id
    from virtctl.webhooks import add as add_

    if since is not None and from_start:
        raise usage("give either --since or --from-start")
    globs = [t.strip() for item in types for t in item.split(",") if t.strip()]
    if since is not None and since.tzinfo is None:
        since = since.astimezone()
    cmd = c.AddWebhook(
        name=name or f"wh-{new_id()[:10]}", url=url, types=globs, vm_pattern=vm,
        from_start=from_start, since=since, actor=_actor(),
    )  # fmt: skip
    _run(add_(server_url(server), cmd, secret=secret, output=_output(output)))


@webhook_app.command("list")
def list_(output: OutOpt = "table", server: ServerOpt = None) -> None:
    """The subscriptions, with their status (Active, or Disabled and why)."""
    from virtctl.webhooks import list_ as list__

    _run(list__(server_url(server), output=_output(output)))


@webhook_app.command("rm")
def rm(webhook: IdArg, server: ServerOpt = None) -> None:
    """Unsubscribe; the endpoint receives nothing more and its secret is destroyed."""
    from virtctl.webhooks import remove

    _run(remove(server_url(server), c.RemoveWebhook(name=webhook, actor=_actor())))


@webhook_app.command("deliveries")
def deliveries(
    webhook: IdArg,
    status: Annotated[
        str | None, typer.Option("--status", help="Delivered, Retrying, DeadLetter or Gone")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 100,
    output: OutOpt = "table",
    server: ServerOpt = None,
) -> None:
    """A subscription's deliveries, newest first, with attempts and the last error."""
    from virtctl.webhooks import deliveries as deliveries_

    coro = deliveries_(server_url(server), name=webhook, status=status, limit=limit,
                       output=_output(output))  # fmt: skip
    _run(coro)


@webhook_app.command("redeliver")
def redeliver(
    webhook: IdArg,
    delivery: Annotated[
        int | None,
        typer.Option("--delivery", min=1, help="one delivery (default: every dead letter)"),
    ] = None,
    output: OutOpt = "table",
    server: ServerOpt = None,
) -> None:
    """Try dead-lettered deliveries (or one given delivery) once more, now."""
    from virtctl.webhooks import redeliver as redeliver_

    _run(redeliver_(server_url(server), name=webhook, seq=delivery, output=_output(output)))


@webhook_app.command("rotate-secret")
def rotate_secret(
    webhook: IdArg,
    secret: Annotated[str | None, typer.Option("--secret", help="the new whsec_ secret")] = None,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="seconds the old secret keeps signing")
    ] = 86400.0,
    server: ServerOpt = None,
) -> None:
    """Sign with a new secret; the old one signs too until --grace has passed."""
    from virtctl.webhooks import rotate_secret as rotate

    _run(rotate(server_url(server), name=webhook, secret=secret, grace_s=grace))
