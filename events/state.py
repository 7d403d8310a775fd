"""The VM state fold: `apply(state, envelope) -> state`, pure, no I/O.

The orchestrator decides on it, the CLI prints it, the audit replay and the tests check it: one
function, so the same events always mean the same VM. Strings are KubeVirt's: `status` is the VM's
printableStatus, `phase` the VMI's phase ("" while there is no VMI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from msgspec.structs import force_setattr, replace

from events import model as m
from events.envelope import Stamped
from events.folding import Skipped, total

RUN_STRATEGIES: Final = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")

# VMI phases (kubevirt.io/v1 VirtualMachineInstancePhase).
PENDING, SCHEDULING, SCHEDULED, RUNNING = "Pending", "Scheduling", "Scheduled", "Running"
SUCCEEDED, FAILED = "Succeeded", "Failed"

# VM printable statuses (kubevirt.io/v1 VirtualMachinePrintableStatus).
STOPPED, STARTING, STOPPING, TERMINATING = "Stopped", "Starting", "Stopping", "Terminating"
PAUSED, MIGRATING, CRASH_LOOP = "Paused", "Migrating", "CrashLoopBackOff"
UNSCHEDULABLE = "ErrorUnschedulable"
DELETED = "Deleted"  # virtbus only: the history outlives the object
IN_PROGRESS = "InProgress"  # a VirtualMachineSnapshot being taken

_STOP_PHASE: Final = {"shutdown": SUCCEEDED, "destroyed": SUCCEEDED, "saved": SUCCEEDED}


class Migration(msgspec.Struct, frozen=True, gc=False):
    """The current or last migration attempt; every attempt stays in the log."""

    id: str
    source: str
    target: str
    phase: str = "Scheduling"
    percent: float = 0.0
    live: bool = True
    reason: str = ""
    requested: datetime | None = None  # queue order while Pending
    scheduled: datetime | None = None  # when the target was chosen: the duration counts from here
    cancel: bool = False  # migrate-cancel asked
    target_pod: str = ""  # the target's launcher, until it is removed


# KubeVirt's VirtualMachineInstanceMigration phases beyond the shared ones.
TARGET_READY, PREPARING_TARGET = "TargetReady", "PreparingTarget"


def migration_active(mig: Migration | None) -> bool:
    """A migration asked for and not concluded (queued ones included)."""
    return mig is not None and mig.phase not in (SUCCEEDED, FAILED)


class Hotplug(msgspec.Struct, frozen=True, gc=False):
    """A volume hotplugged into the running instance: what to attach, and the request's version."""

    volume: dict[str, Any]
    disk: dict[str, Any]
    requested: int = 0  # version of the latest attach or detach request
    reason: str = ""  # why the attach failed


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A VirtualMachineSnapshot of this VM: its spec then, and copies of its persistent volumes."""

    name: str
    requested: int = 0  # version of the request: names can be used again after a delete
    phase: str = IN_PROGRESS  # KubeVirt's: InProgress, Succeeded, Failed
    online: bool = False
    node: str = ""
    spec: dict[str, Any] = {}
    volumes: list[str] = []
    skipped: dict[str, str] = {}
    created: datetime | None = None
    ready_at: datetime | None = None
    size_bytes: int = 0
    reason: str = ""

    @property
    def in_progress(self) -> bool:
        return self.phase == IN_PROGRESS


class Restore(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The current or last VirtualMachineRestore; every one stays in the log."""

    name: str
    snapshot: str
    node: str = ""
    complete: bool = False
    reason: str = ""  # why it failed
    created: datetime | None = None
    done_at: datetime | None = None


class VMState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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
    home: str = ""  # the node a cold migration moved a stopped VM's definition to: starts go there
    snapshots: dict[str, Snapshot] = {}
    restore: Restore | None = None
    last_node: str = ""  # where the VM ran or was moved to last: its persistent volumes are there
    renamed_to: str = ""  # this life ended in a rename: the VM goes on under that name
    volumes: dict[str, str] = {}  # hotplugged volume -> Pending, Ready, Failed, Detaching
    hotplug: dict[str, Hotplug] = {}
    last_rejection: str = ""
    restarting: bool = False  # a restart was asked: start again once the instance is down
    want_paused: bool = False  # what the user asked; `paused` is what the node observed
    intent_version: int = 0  # version of the latest start/stop/restart/pause/unpause request
    started: datetime | None = None  # when the current instance's domain started
    backoff_until: datetime | None = None  # CrashLoopBackOff: no restart before this
    stop_grace: int | None = None  # how the latest stop asked to be done
    stop_force: bool = False
    skipped: tuple[Skipped, ...] = ()  # events the fold could not take (events/folding.py)

    @property
    def running(self) -> bool:
        """A VMI exists (in any phase short of its end)."""
        return self.phase in (PENDING, SCHEDULING, SCHEDULED, RUNNING)

    @property
    def snapshotting(self) -> str:
        """The snapshot being taken (KubeVirt's `status.snapshotInProgress`), or ""."""
        return next((n for n, snap in self.snapshots.items() if snap.in_progress), "")

    @property
    def restoring(self) -> bool:
        """A VirtualMachineRestore is under way: the VM must not start."""
        return self.restore is not None and not self.restore.complete and not self.restore.reason


def _migrating(s: VMState) -> bool:
    # A queued (Pending) migration does not make the VM Migrating yet, as in KubeVirt.
    return migration_active(s.migration) and s.migration.phase != PENDING  # type: ignore[union-attr]


_REVIVE: Final = (m.VMCreated, m.VMUndeleted)


def _running_status(s: VMState) -> str:
    # KubeVirt's precedence: Migrating over Paused over Running.
    if _migrating(s):
        return MIGRATING
    return PAUSED if s.paused else RUNNING


def _migration(s: VMState, migration_id: str, **changes: Any) -> Migration | None:
    if s.migration is None or s.migration.id != migration_id:
        return s.migration
    return replace(s.migration, **changes)


@total
def apply(s: VMState, env: Stamped) -> VMState:
    """Return the state after `env`; unknown or irrelevant events leave it as it was."""
    handler = _HANDLERS.get(type(env.data))
    if handler is None or (s.deleted and not isinstance(env.data, _REVIVE)):
        # A deleted VM's life is over: late observations do not touch it.
        return replace(s, version=env.version, updated=env.time)
    new = handler(s, env.data, env)
    if new is s:
        return replace(s, version=env.version, updated=env.time)
    # `new` is a copy made just now and seen by no one: stamping it saves a second copy per event.
    force_setattr(new, "version", env.version)
    force_setattr(new, "updated", env.time)
    return new


_Handler = Callable[[VMState, Any, Stamped], VMState]
_HANDLERS: dict[type[m.Event], _Handler] = {}


def _on(*kinds: type[m.Event]) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for kind in kinds:
            _HANDLERS[kind] = fn
        return fn

    return register


@_on(m.VMScheduled)
def _vm_scheduled(s: VMState, e: m.VMScheduled, env: Stamped) -> VMState:
    return replace(s, node=e.node, vmi_uid=e.vmi_uid, phase=SCHEDULING, status=STARTING)


@_on(m.VMCreated)
def _vm_created(s: VMState, e: m.VMCreated, env: Stamped) -> VMState:
    _, ns, name = env.subject.split("/")
    # A new life under an old name starts from nothing; only the version keeps counting.
    new = VMState(
        namespace=ns, name=name, version=s.version, updated=env.time, exists=True,
        spec=e.spec, labels=e.labels, run_strategy=e.run_strategy, created=env.time,
    )  # fmt: skip
    return _vm_start_requested(new, _START, env) if e.start else new


@_on(m.VMSpecChanged)
def _vm_spec_changed(s: VMState, e: m.VMSpecChanged, env: Stamped) -> VMState:
    return replace(
        s,
        spec=e.spec,
        run_strategy=e.run_strategy or s.run_strategy,
        labels=s.labels if e.labels is None else e.labels,
        restart_required=s.restart_required or (e.restart_required and s.running),
    )


@_on(m.VMDeleteRequested)
def _vm_delete_requested(s: VMState, e: m.VMDeleteRequested, env: Stamped) -> VMState:
    return replace(s, status=TERMINATING)


@_on(m.VMDeleted)
def _vm_deleted(s: VMState, e: m.VMDeleted, env: Stamped) -> VMState:
    return replace(s, exists=False, deleted=True, status=DELETED, phase="", node="", ready=False)


@_on(m.VMRenamed)
def _vm_renamed(s: VMState, e: m.VMRenamed, env: Stamped) -> VMState:
    done = replace(s, exists=False, deleted=True, status=DELETED, phase="", node="", ready=False)
    return replace(done, renamed_to=e.to)


@_on(m.VMUndeleted)
def _vm_undeleted(s: VMState, e: m.VMUndeleted, env: Stamped) -> VMState:
    return replace(s, exists=True, deleted=False, status=STOPPED)


_START: Final = m.VMStartRequested()


def _spec_says(spec: dict[str, Any], strategy: str) -> dict[str, Any]:
    """The VM spec once virt-api's start/stop patched it: `running` (or `runStrategy`, when the
    spec uses that) says `strategy`, so `get vm -o yaml` and the next `apply` see what runs."""
    if "template" not in spec:  # a bare VMI's spec has neither field
        return spec
    if spec.get("runStrategy") is not None:
        return {**spec, "runStrategy": strategy}
    return {**spec, "running": strategy == "Always"}


@_on(m.VMStartRequested)
def _vm_start_requested(s: VMState, e: m.VMStartRequested, env: Stamped) -> VMState:
    # Like `virtctl start`, which sets `running: true`: a Halted VM becomes Always.
    strategy = "Always" if s.run_strategy == "Halted" else s.run_strategy
    spec = _spec_says(s.spec, strategy) if strategy != s.run_strategy else s.spec
    return replace(
        s, status=STARTING, phase=PENDING, reason="", restart_required=False, paused=False,
        want_paused=False, restarting=False, run_strategy=strategy, node="", vmi_uid="",
        ready=False, failures=s.failures if e.restart else 0, intent_version=env.version,
        spec=spec,
    )  # fmt: skip


@_on(m.VMStopRequested)
def _vm_stop_requested(s: VMState, e: m.VMStopRequested, env: Stamped) -> VMState:
    # Like `virtctl stop` (`running: false`): nothing restarts it afterwards.
    halted = s.run_strategy in ("Always", "RerunOnFailure")
    if not s.running and not halted:
        return s
    return replace(
        s,
        status=STOPPING if s.running else s.status,
        run_strategy="Halted" if halted else s.run_strategy,
        spec=_spec_says(s.spec, "Halted") if halted else s.spec,
        restarting=False,
        intent_version=env.version,
        stop_grace=e.grace_period_seconds,
        stop_force=e.force,
    )


@_on(m.VMRestartRequested)
def _vm_restart_requested(s: VMState, e: m.VMRestartRequested, env: Stamped) -> VMState:
    if not s.running:
        return s
    return replace(s, status=STOPPING, restarting=True, intent_version=env.version)


@_on(m.VMPauseRequested, m.VMUnpauseRequested)
def _vm_pause_requested(
    s: VMState, e: m.VMPauseRequested | m.VMUnpauseRequested, env: Stamped
) -> VMState:
    return replace(s, want_paused=isinstance(e, m.VMPauseRequested), intent_version=env.version)


@_on(m.VMUnschedulable)
def _vm_unschedulable(s: VMState, e: m.VMUnschedulable, env: Stamped) -> VMState:
    return replace(s, status=UNSCHEDULABLE, phase=SCHEDULING, reason=e.reason)


@_on(m.LauncherCreated)
def _launcher_created(s: VMState, e: m.LauncherCreated, env: Stamped) -> VMState:
    mig = s.migration
    if mig is not None and _migrating(s) and e.node == mig.target and e.node != s.node:
        phase = SCHEDULED if mig.phase == SCHEDULING else mig.phase  # the target pod runs
        return replace(s, migration=replace(mig, phase=phase, target_pod=e.pod))
    return replace(s, phase=SCHEDULED) if s.phase in (PENDING, SCHEDULING) else s


@_on(m.LauncherFailed)
def _launcher_failed(s: VMState, e: m.LauncherFailed, env: Stamped) -> VMState:
    if s.migration and e.node == s.migration.target and e.node != s.node:
        # A failed migration target does not touch the running source; the migration fails.
        return replace(s, migration=_migration(s, s.migration.id, reason=e.reason))
    return replace(s, phase=FAILED, ready=False, reason=e.reason)


@_on(m.DomainStarted)
def _domain_started(s: VMState, e: m.DomainStarted, env: Stamped) -> VMState:
    if s.node and e.node != s.node:
        return s  # the target of a migration reports its own start
    # The node's observation is enough: the VMI is Running and ready (virtbus has no guest probes).
    status = s.status if s.status in (STOPPING, TERMINATING) else _running_status(s)
    return replace(
        s, phase=RUNNING, node=e.node, status=status, ready=not s.paused, started=env.time,
        last_node=e.node,
    )  # fmt: skip


@_on(m.VMRunning)
def _vm_running(s: VMState, e: m.VMRunning, env: Stamped) -> VMState:
    return replace(
        s,
        phase=RUNNING,
        node=e.node,
        ready=not s.paused,
        failures=0,
        status=_running_status(s),
        reason="",
    )


@_on(m.DomainPaused)
def _domain_paused(s: VMState, e: m.DomainPaused, env: Stamped) -> VMState:
    status = MIGRATING if _migrating(s) else PAUSED
    return replace(s, paused=True, ready=False, status=status, reason=e.reason)


@_on(m.DomainResumed)
def _domain_resumed(s: VMState, e: m.DomainResumed, env: Stamped) -> VMState:
    return replace(
        s,
        paused=False,
        ready=s.phase == RUNNING,
        status=_running_status(replace(s, paused=False)),
    )


@_on(m.DomainStopped)
def _domain_stopped(s: VMState, e: m.DomainStopped, env: Stamped) -> VMState:
    if e.reason == "migrated" or (s.node and e.node != s.node):
        return s
    # Stopping only while a stop is under way; a VMI that ended by itself shows Stopped.
    status = s.status if s.status in (STOPPING, TERMINATING) else STOPPED
    return replace(
        s,
        phase=_STOP_PHASE.get(e.reason, FAILED),
        ready=False,
        paused=False,
        status=status,
        reason=e.reason,
    )


@_on(m.VMStopped)
def _vm_stopped(s: VMState, e: m.VMStopped, env: Stamped) -> VMState:
    return replace(
        s,
        phase="",
        node="",
        vmi_uid="",
        ready=False,
        paused=False,
        status=STOPPED,
        reason=e.reason or s.reason,
        volumes={},  # a hotplugged volume does not outlive its instance
        hotplug={},
    )


@_on(m.VMStartFailed)
def _vm_start_failed(s: VMState, e: m.VMStartFailed, env: Stamped) -> VMState:
    return replace(s, status=e.status, phase=FAILED, ready=False, reason=e.reason)


@_on(m.VMFailed)
def _vm_failed(s: VMState, e: m.VMFailed, env: Stamped) -> VMState:
    return replace(
        s,
        phase=FAILED,
        ready=False,
        paused=False,
        failures=s.failures + 1,
        status=STOPPED,
        reason=e.reason,
        node="",  # the failed instance is concluded: nothing runs anywhere for it
        vmi_uid="",
        volumes={},
        hotplug={},
    )


@_on(m.VMBackoff)
def _vm_backoff(s: VMState, e: m.VMBackoff, env: Stamped) -> VMState:
    until = env.time + timedelta(seconds=e.delay_seconds)
    return replace(s, status=CRASH_LOOP, failures=e.failures, backoff_until=until)


@_on(m.LauncherDeleted)
def _launcher_deleted(s: VMState, e: m.LauncherDeleted, env: Stamped) -> VMState:
    mig = s.migration
    if mig is not None and mig.target_pod == e.pod and e.node == mig.target != s.node:
        return replace(s, migration=replace(mig, target_pod=""))  # a failed target cleaned up
    return s


@_on(m.CommandRejected)
def _command_rejected(s: VMState, e: m.CommandRejected, env: Stamped) -> VMState:
    return replace(s, last_rejection=e.reason)


def fold(envelopes: Iterable[Stamped], state: VMState | None = None) -> VMState:
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
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": s.reason,
            }
        )
    if s.restart_required:
        out.append(
            {
                "type": "RestartRequired",
                "status": "True",
                "message": "a non-live-updatable field was changed in the template spec",
            }
        )
    return out


# The handlers of migrations, snapshots and restores, and volume hotplug live in their own module
# (this one stays readable); importing it registers them in `_HANDLERS`.
from events import fold_features as _fold_features  # noqa: E402, F401
