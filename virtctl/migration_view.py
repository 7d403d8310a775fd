"""`virtbus get migrations`: every migration attempt, folded from the log, as KubeVirt shows VMIMs.

KubeVirt keeps the last five VirtualMachineInstanceMigration objects per VM; virtbus keeps every
attempt, because each one is a run of events on its VM's subject tree. This module folds those
runs (`fold_attempts`, pure) and renders them: kubectl's columns, or kubevirt.io/v1 objects for
`-o json|yaml`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import msgspec
import typer
from msgspec.structs import replace

from bus.client import session
from bus.store import EventStore
from events import model as m
from events import render
from events.envelope import Recorded
from events.errors import VirtbusError
from events.model import TOKEN

_KINDS: Final = (
    m.MigrationRequested, m.MigrationScheduled, m.MigrationTargetPreparing,
    m.MigrationTargetReady, m.MigrationStarted,
    m.MigrationProgress, m.MigrationCancelRequested, m.MigrationSucceeded, m.MigrationFailed,
    m.LauncherCreated,
)  # fmt: skip
SUBJECTS: Final = [f"virt.vm.*.*.{TOKEN[k]}" for k in _KINDS]


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
        _, _, ns, vm, _ = rec.subject.split(".")
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


def table(attempts: list[Attempt], *, wide: bool, namespace: str | None) -> str:
    header = ["NAME", "PHASE", "VMI"]
    if wide:
        header += ["SOURCE", "TARGET", "MODE", "PROGRESS", "DOWNTIME", "AGE", "REASON"]
    rows = []
    for a in attempts:
        cells = ([a.namespace] if namespace is None else []) + [a.name, a.phase, a.vm]
        if wide:
            downtime = f"{a.downtime_ms:.0f}ms" if a.phase == "Succeeded" else ""
            cells += [a.source or "<none>", a.target or "<none>", a.mode, f"{a.percent:.0f}%",
                      downtime, render.age(a.created), a.reason]  # fmt: skip
        rows.append(cells)
    if not rows:
        return render.no_resources(namespace)
    return render.table((["NAMESPACE"] if namespace is None else []) + header, rows)


async def get_migrations(url: str, *, name: str | None, namespace: str | None, output: str) -> int:
    """`virtbus get migrations [NAME]`: read from the log (the read model holds VMs only)."""
    async with session(url) as nc:
        found: list[Recorded] = []
        await EventStore(nc).replay(found.append, subjects=SUBJECTS, verify=False)
    attempts = [a for a in fold_attempts(found) if (namespace is None or a.namespace == namespace)
                and (name is None or a.name == name)]  # fmt: skip
    if name and not attempts:
        raise VirtbusError(f'virtualmachineinstancemigrations.kubevirt.io "{name}" not found')
    if output in ("json", "yaml"):
        objs = [vmim_object(a) for a in attempts]
        doc = objs[0] if name else render.as_list(objs)
        typer.echo((render.to_json(doc) if output == "json" else render.to_yaml(doc)).rstrip())
        return 0
    typer.echo(table(attempts, wide=output == "wide", namespace=namespace).rstrip())
    return 0
