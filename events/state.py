"""The VM state fold: `apply(state, envelope) -> state`, pure, no I/O.

The orchestrator decides on it, the CLI prints it, the audit replay and the tests check it: one
function, so the same events always mean the same VM. Strings are KubeVirt's: `status` is the VM's
printableStatus, `phase` the VMI's phase ("" while there is no VMI).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope

RUN_STRATEGIES: Final = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")

# VMI phases (kubevirt.io/v1 VirtualMachineInstancePhase).
PENDING, SCHEDULING, SCHEDULED, RUNNING = "Pending", "Scheduling", "Scheduled", "Running"
SUCCEEDED, FAILED = "Succeeded", "Failed"

# VM printable statuses (kubevirt.io/v1 VirtualMachinePrintableStatus).
STOPPED, STARTING, STOPPING, TERMINATING = "Stopped", "Starting", "Stopping", "Terminating"
PAUSED, MIGRATING, CRASH_LOOP = "Paused", "Migrating", "CrashLoopBackOff"
UNSCHEDULABLE = "ErrorUnschedulable"
DELETED = "Deleted"  # virtbus only: the history outlives the object

_STOP_PHASE: Final = {"shutdown": SUCCEEDED, "destroyed": SUCCEEDED, "saved": SUCCEEDED}


class Migration(msgspec.Struct, frozen=True):
    """The current or last migration attempt; every attempt stays in the log."""

    id: str
    source: str
    target: str
    phase: str = "Scheduling"
    percent: float = 0.0
    live: bool = True
    reason: str = ""


class VMState(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str = ""
    name: str = ""
    version: int = 0
    exists: bool = False
    deleted: bool = False
    spec: dict[str, Any] = {}
    labels: dict[str, str] = {}
    run_strategy: str = "Halted"
    created: datetime | None = None
    updated: datetime | None = None
    status: str = STOPPED
    phase: str = ""
    node: str = ""
    vmi_uid: str = ""
    ready: bool = False
    paused: bool = False
    restart_required: bool = False
    failures: int = 0
    reason: str = ""
    migration: Migration | None = None
    migrations: int = 0
    snapshots: dict[str, str] = {}
    volumes: dict[str, str] = {}
    last_rejection: str = ""

    @property
    def running(self) -> bool:
        """A VMI exists (in any phase short of its end)."""
        return self.phase in (PENDING, SCHEDULING, SCHEDULED, RUNNING)


def _running_status(s: VMState) -> str:
    if s.paused:
        return PAUSED
    migrating = s.migration is not None and s.migration.phase not in (SUCCEEDED, FAILED)
    return MIGRATING if migrating else RUNNING


def _migration(s: VMState, migration_id: str, **changes: Any) -> VMState:
    if s.migration is None or s.migration.id != migration_id:
        return s
    return replace(s, migration=replace(s.migration, **changes))


def apply(s: VMState, env: Envelope) -> VMState:  # noqa: PLR0915 - one arm per event kind
    """Return the state after `env`; unknown or irrelevant events leave it as it was."""
    e = env.data
    s = replace(s, version=env.version, updated=env.time)
    match e:
        case m.VMCreated():
            _, ns, name = env.subject.split("/")
            return replace(
                s, namespace=ns, name=name, exists=True, deleted=False,
                spec=e.spec, labels=e.labels, run_strategy=e.run_strategy, created=env.time,
                status=STOPPED, phase="", node="", reason="",
            )  # fmt: skip
        case m.VMSpecChanged():
            return replace(
                s, spec=e.spec, run_strategy=e.run_strategy or s.run_strategy,
                labels=s.labels if e.labels is None else e.labels,
                restart_required=s.restart_required or (e.restart_required and s.running),
            )  # fmt: skip
        case m.VMDeleteRequested():
            return replace(s, status=TERMINATING)
        case m.VMDeleted():
            return replace(
                s, exists=False, deleted=True, status=DELETED, phase="", node="", ready=False
            )
        case m.VMUndeleted():
            return replace(s, exists=True, deleted=False, status=STOPPED)
        case m.VMStartRequested():
            return replace(
                s, status=STARTING, phase=PENDING, reason="", restart_required=False, paused=False
            )
        case m.VMStopRequested() | m.VMRestartRequested():
            return replace(s, status=STOPPING) if s.running else s
        case m.VMScheduled():
            return replace(s, node=e.node, vmi_uid=e.vmi_uid, phase=SCHEDULING, status=STARTING)
        case m.VMUnschedulable():
            return replace(s, status=UNSCHEDULABLE, phase=SCHEDULING, reason=e.reason)
        case m.LauncherCreated():
            return replace(s, phase=SCHEDULED) if s.phase in (PENDING, SCHEDULING) else s
        case m.LauncherFailed():
            if s.migration and e.node == s.migration.target and e.node != s.node:
                return s  # a failed migration target does not touch the running source
            return replace(s, phase=FAILED, ready=False, reason=e.reason)
        case m.DomainStarted():
            if s.node and e.node != s.node:
                return s  # the target of a migration reports its own start
            return replace(s, phase=RUNNING, node=e.node, status=_running_status(s))
        case m.VMRunning():
            return replace(
                s, phase=RUNNING, node=e.node, ready=not s.paused, failures=0,
                status=_running_status(s), reason="",
            )  # fmt: skip
        case m.DomainPaused():
            return replace(s, paused=True, ready=False, status=PAUSED, reason=e.reason)
        case m.DomainResumed():
            s = replace(s, paused=False, ready=s.phase == RUNNING)
            return replace(s, status=_running_status(s))
        case m.DomainStopped():
            if e.reason == "migrated" or (s.node and e.node != s.node):
                return s
            status = STOPPING if s.status in (RUNNING, PAUSED, MIGRATING) else s.status
            return replace(
                s, phase=_STOP_PHASE.get(e.reason, FAILED), ready=False, paused=False,
                status=status, reason=e.reason,
            )  # fmt: skip
        case m.VMStopped():
            return replace(
                s, phase="", node="", vmi_uid="", ready=False, paused=False, status=STOPPED,
                reason=e.reason or s.reason,
            )  # fmt: skip
        case m.VMStartFailed():
            return replace(s, status=e.status, phase=FAILED, ready=False, reason=e.reason)
        case m.VMFailed():
            return replace(
                s, phase=FAILED, ready=False, paused=False, failures=s.failures + 1,
                status=STOPPED, reason=e.reason,
            )  # fmt: skip
        case m.VMBackoff():
            return replace(s, status=CRASH_LOOP, failures=e.failures)
        case m.MigrationScheduled():
            mig = Migration(e.migration, e.source, e.target, live=e.live)
            return replace(s, migration=mig, migrations=s.migrations + 1, status=MIGRATING)
        case m.MigrationTargetReady():
            return _migration(s, e.migration, phase="TargetReady")
        case m.MigrationStarted():
            return _migration(s, e.migration, phase=RUNNING)
        case m.MigrationProgress():
            return _migration(s, e.migration, percent=e.percent)
        case m.MigrationSucceeded():
            s = _migration(s, e.migration, phase=SUCCEEDED, percent=100.0)
            return replace(s, node=e.target, status=PAUSED if s.paused else RUNNING)
        case m.MigrationFailed():
            s = _migration(s, e.migration, phase=FAILED, reason=e.reason)
            return replace(s, status=_running_status(s)) if s.status == MIGRATING else s
        case m.SnapshotRequested():
            return replace(s, snapshots={**s.snapshots, e.snapshot: "InProgress"})
        case m.SnapshotSucceeded():
            return replace(s, snapshots={**s.snapshots, e.snapshot: SUCCEEDED})
        case m.SnapshotFailed():
            return replace(s, snapshots={**s.snapshots, e.snapshot: FAILED})
        case m.SnapshotDeleted():
            return replace(s, snapshots={k: v for k, v in s.snapshots.items() if k != e.snapshot})
        case m.VolumeAttachRequested():
            name = str(e.volume.get("name", ""))
            return replace(s, volumes={**s.volumes, name: "Pending"})
        case m.VolumeAttached():
            return replace(s, volumes={**s.volumes, e.volume: "Ready"})
        case m.VolumeDetachRequested():
            return replace(s, volumes={**s.volumes, e.volume: "Detaching"})
        case m.VolumeDetached():
            return replace(s, volumes={k: v for k, v in s.volumes.items() if k != e.volume})
        case m.CommandRejected():
            return replace(s, last_rejection=e.reason)
    return s


def fold(envelopes: Iterable[Envelope], state: VMState | None = None) -> VMState:
    s = state or VMState()
    for env in envelopes:
        s = apply(s, env)
    return s


def conditions(s: VMState) -> list[dict[str, str]]:
    """KubeVirt-style conditions derived from the state (never stored, so never stale)."""
    out = [
        {
            "type": "Ready",
            "status": str(s.ready),
            "reason": "" if s.ready else (s.reason or ("VMINotExists" if not s.running else "")),
        }
    ]
    if s.paused:
        out.append({"type": "Paused", "status": "True", "reason": "PausedByUser"})
    if s.status == UNSCHEDULABLE:
        out.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": s.reason}
        )  # fmt: skip
    if s.restart_required:
        out.append(
            {"type": "RestartRequired", "status": "True",
             "message": "a non-live-updatable field was changed in the template spec"}
        )  # fmt: skip
    return out
