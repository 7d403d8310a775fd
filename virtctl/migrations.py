"""What the migration verbs do over the bus: `get migrations` (the view) and `migrate --watch`.

The view: KubeVirt keeps the last five VirtualMachineInstanceMigration objects per VM; virtbus
keeps every attempt, because each one is a run of events on its VM's subject tree. `fold_attempts`
(pure) folds those runs; they are rendered as kubectl's columns, or kubevirt.io/v1 objects for
`-o json|yaml`.

The watch: the CLI names the migration itself, so it can pick that attempt's events out of the VM's
subject tree: phases as a progress bar's label, `MigrationProgress` as its fill (percent, data sent
and left, transfer rate), and the outcome as the last line and the exit code (1 when it failed).

The typer verbs are in `cli_migrate.py` (and `get` in `cli_verbs.py`).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import msgspec
import typer
from msgspec.structs import replace
from nats.aio.client import Client
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from bus.client import send, session
from bus.store import EventStore
from events import commands as c
from events import model as m
from events import render
from events.envelope import Recorded
from events.model import TOKEN
from events.names import Ref
from virtctl.kinds import VMIM
from virtctl.listing import Item, Listing

_KINDS: Final = (
    m.MigrationRequested, m.MigrationScheduled, m.MigrationTargetPreparing,
    m.MigrationTargetReady, m.MigrationStarted,
    m.MigrationProgress, m.MigrationCancelRequested, m.MigrationSucceeded, m.MigrationFailed,
    m.LauncherCreated,
)  # fmt: skip
# (a node's observations end in its name: one filter with it, one without)
SUBJECTS: Final = [f"virt.vm.*.*.{TOKEN[k]}{w}" for k in _KINDS for w in ("", ".*")]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    vm: str
    name: str
    phase: str = "Pending"
    source: str = ""
    target: str = ""
    mode: str = "live"
    created: datetime | None = None
    ended: datetime | None = None
    percent: float = 0.0
    downtime_ms: float = 0.0
    duration_ms: float = 0.0
    reason: str = ""
    aborted: bool = False


def fold_attempts(records: Iterable[Recorded]) -> list[Attempt]:
    """Every attempt in log order; `records` are migration events (and launcher creations)."""
    out: dict[tuple[str, str, str], Attempt] = {}
    current: dict[tuple[str, str], tuple[str, str, str]] = {}  # VM -> its latest attempt
    for rec in records:
        _, _, ns, vm, *_ = rec.subject.split(".")
        e, at = rec.envelope.data, rec.envelope.time
        if isinstance(e, m.LauncherCreated):
            key = current.get((ns, vm))
            a = out.get(key) if key else None
            if key and a and a.phase == "Scheduling" and e.node == a.target:
                out[key] = replace(a, phase="Scheduled")
            continue
        key = (ns, vm, getattr(e, "migration", ""))
        a = out.get(key) or Attempt(namespace=ns, vm=vm, name=key[2], created=at)
        current[(ns, vm)] = key
        match e:
            case m.MigrationRequested():
                a = replace(a, target=e.target_node)
            case m.MigrationScheduled():
                a = replace(a, phase="Scheduling", source=e.source, target=e.target,
                            mode="live" if e.live else "cold")  # fmt: skip
            case m.MigrationTargetPreparing():
                a = replace(a, phase="PreparingTarget")
            case m.MigrationTargetReady():
                a = replace(a, phase="TargetReady")
            case m.MigrationStarted():
                a = replace(a, phase="Running")
            case m.MigrationProgress():
                a = replace(a, percent=e.percent)
            case m.MigrationSucceeded():
                a = replace(a, phase="Succeeded", percent=100.0, ended=at, mode=e.mode,
                            downtime_ms=e.downtime_ms, duration_ms=e.duration_ms)  # fmt: skip
            case m.MigrationFailed():
                a = replace(a, phase="Failed", ended=at, reason=e.reason, aborted=e.aborted)
        out[key] = a
    return list(out.values())


def vmim_object(a: Attempt) -> dict[str, Any]:
    """A kubevirt.io/v1 VirtualMachineInstanceMigration, as `kubectl get vmim -o json` shows."""
    state: dict[str, Any] = {
        "sourceNode": a.source, "targetNode": a.target, "mode": a.mode,
        "completed": a.phase == "Succeeded", "failed": a.phase == "Failed",
        "startTimestamp": render.timestamp(a.created), "endTimestamp": render.timestamp(a.ended),
    }  # fmt: skip
    if a.phase == "Succeeded":
        state["downtimeMs"], state["durationMs"] = a.downtime_ms, a.duration_ms
    if a.phase == "Failed":
        state["failureReason"] = a.reason
        if a.aborted:
            state["abortStatus"] = "Succeeded"
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": a.name, "namespace": a.namespace,
                     "creationTimestamp": render.timestamp(a.created)},
        "spec": {"vmiName": a.vm},
        "status": {"phase": a.phase, "migrationState": state},
    }  # fmt: skip


def cells(a: Attempt, *, wide: bool) -> list[str]:
    row = [a.name, a.phase, a.vm]
    if wide:
        downtime = f"{a.downtime_ms:.0f}ms" if a.phase == "Succeeded" else ""
        row += [a.source or "<none>", a.target or "<none>", a.mode, f"{a.percent:.0f}%",
                downtime, render.age(a.created), a.reason]  # fmt: skip
    return row


HEADER: Final = ["NAME", "PHASE", "VMI"]
WIDE: Final = ["SOURCE", "TARGET", "MODE", "PROGRESS", "DOWNTIME", "AGE", "REASON"]


async def listing(nc: Client, *, name: str | None, namespace: str | None, wide: bool) -> Listing:
    """`virtbus get migrations [NAME]`: read from the log (the read model holds VMs only)."""
    found: list[Recorded] = []
    await EventStore(nc).replay(found.append, subjects=SUBJECTS, verify=False)
    attempts = [a for a in fold_attempts(found) if (namespace is None or a.namespace == namespace)
                and (name is None or a.name == name)]  # fmt: skip
    items = [Item(a.namespace, a.name, {}, vmim_object(a), cells(a, wide=wide)) for a in attempts]
    return Listing(VMIM, HEADER + (WIDE if wide else []), items)


# --- migrate --watch ------------------------------------------------------------------------------


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
            tail = store.follow(from_seq=position + 1, subjects=[ref.wildcard])
            async with contextlib.aclosing(tail):  # its consumer ends with the watch
                async for rec in tail:
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
                            bar.update(
                                task, completed=e.percent, detail=_detail(e), description=phase
                            )
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
