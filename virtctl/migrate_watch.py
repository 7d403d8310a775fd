"""`virtbus migrate NAME --watch`: ask for a migration, then follow it on the log as a progress bar.

The CLI names the migration itself, so it can pick that attempt's events out of the VM's subject
tree: phases as the bar's label, `MigrationProgress` as its fill (percent, data sent and left,
transfer rate), and the outcome as the last line and the exit code (1 when it failed).
"""

from __future__ import annotations

import secrets

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from bus.client import send, session
from bus.store import EventStore
from events import commands as c
from events import model as m
from events.names import Ref


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _detail(e: m.MigrationProgress) -> str:
    rate = f", {_size(e.rate_bps)}/s" if e.rate_bps else ""
    return (f"{_size(e.data_processed)} sent, {_size(e.data_remaining)} left of "
            f"{_size(e.data_total)}{rate}")  # fmt: skip


async def migrate_and_watch(
    url: str, *, name: str, namespace: str, to: str | None, actor: str
) -> int:
    migration = f"kubevirt-migrate-vm-{secrets.token_hex(3)[:5]}"
    ref = Ref.vm(name, namespace)
    async with session(url) as nc:
        store = EventStore(nc)
        done: m.MigrationSucceeded | None = None
        position = (await store.head(ref, fresh=True)).seq
        await send(nc, c.MigrateVM(name=name, namespace=namespace, target_node=to,
                                   migration=migration, actor=actor))  # fmt: skip
        typer.echo(f"VM {name} was scheduled to migrate ({migration})")
        columns = (TextColumn("{task.description:<19}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[detail]}"))  # fmt: skip
        with Progress(*columns, console=Console(), transient=False) as bar:
            task = bar.add_task("Pending", total=100.0, detail="")
            async for rec in store.follow(from_seq=position + 1):
                e = rec.envelope.data
                if not rec.subject.startswith(ref.prefix + ".") or (
                    getattr(e, "migration", None) != migration
                ):
                    continue
                match e:
                    case m.MigrationScheduled():
                        how = "live" if e.live else "cold"
                        bar.update(task, description=f"Scheduling ({how})",
                                   detail=f"{e.source or '<none>'} -> {e.target}")  # fmt: skip
                    case m.MigrationTargetPreparing():
                        bar.update(task, description="PreparingTarget")
                    case m.MigrationTargetReady():
                        bar.update(task, description="TargetReady")
                    case m.MigrationStarted():
                        bar.update(task, description="Running")
                    case m.MigrationProgress():
                        phase = "Running (post-copy)" if e.post_copy else "Running"
                        bar.update(task, completed=e.percent, detail=_detail(e), description=phase)
                    case m.MigrationSucceeded():
                        bar.update(task, description="Succeeded", completed=100.0)
                        done = e
                        break
                    case m.MigrationFailed():
                        bar.update(task, description="Failed")
                        typer.echo(f"error: migration {migration} failed: {e.reason}", err=True)
                        return 1
    if done is None:
        return 1  # the log ended (the server went away) before the migration did
    source = done.source or "<none>"
    how = (f"downtime {done.downtime_ms:.0f} ms" if done.mode == "live"
           else "the guest restarted there")  # fmt: skip
    typer.echo(
        f"VM {name} migrated ({done.mode}) from {source} to {done.target} in "
        f"{done.duration_ms / 1000:.2f}s, {how}"
    )
    return 0
