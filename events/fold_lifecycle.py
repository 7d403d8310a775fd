"""The VM fold's lifecycle handlers: definition, start and stop, and what the node observes.

Each handler is a pure function of the state and one event (with its envelope's version, time
and subject); `events/state.py` puts them into the fold's table beside the handlers of migrations,
snapshots and hotplug.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.vmstate import (
    CRASH_LOOP,
    DELETED,
    FAILED,
    MIGRATING,
    PAUSED,
    PENDING,
    RUNNING,
    SCHEDULED,
    SCHEDULING,
    STARTING,
    STOPPED,
    STOPPING,
    SUCCEEDED,
    TERMINATING,
    UNSCHEDULABLE,
    Revision,
    VMState,
    migrating,
    migration_active,
    running_status,
    spec_says,
    with_migration,
)

_STOP_PHASE: Final = {"shutdown": SUCCEEDED, "destroyed": SUCCEEDED, "saved": SUCCEEDED}
_START: Final = m.VMStartRequested()


def vm_scheduled(s: VMState, e: m.VMScheduled, env: Stamped) -> VMState:
    size = e.size
    return replace(
        s, node=e.node, vmi_uid=e.vmi_uid, phase=SCHEDULING, status=STARTING, size=size,
        sockets_now=size.sockets if size else 0, guest_now=size.guest if size else 0,
        hot_sockets=0, hot_guest=0, guest_plugged=0,
    )  # fmt: skip


def vm_created(s: VMState, e: m.VMCreated, env: Stamped) -> VMState:
    _, ns, name = env.subject.split("/")
    # A new life under an old name starts from nothing; only the version keeps counting.
    new = VMState(
        namespace=ns, name=name, version=s.version, updated=env.time, exists=True,
        spec=e.spec, labels=e.labels, annotations=e.annotations, run_strategy=e.run_strategy,
        created=env.time,
        source_kind=e.source_kind,
    )  # fmt: skip
    return vm_start_requested(new, _START, env) if e.start else new


def vm_spec_changed(s: VMState, e: m.VMSpecChanged, env: Stamped) -> VMState:
    return replace(
        s,
        spec=e.spec,
        run_strategy=e.run_strategy or s.run_strategy,
        labels=s.labels if e.labels is None else e.labels,
        annotations=s.annotations if e.annotations is None else e.annotations,
        restart_required=s.restart_required or (e.restart_required and s.running),
        # A capture lasts while the spec names its kind (an expanded VM names none).
        revisions={k: r for k, r in s.revisions.items() if k in e.spec},
    )


def instancetype_revision_captured(
    s: VMState, e: m.InstancetypeRevisionCaptured, env: Stamped
) -> VMState:
    captured = Revision(e.object_kind, e.name, e.revision, e.spec, env.time)
    return replace(s, revisions={**s.revisions, e.which: captured})


def vm_delete_requested(s: VMState, e: m.VMDeleteRequested, env: Stamped) -> VMState:
    return replace(s, status=TERMINATING)


def vm_deleted(s: VMState, e: m.VMDeleted, env: Stamped) -> VMState:
    return replace(s, exists=False, deleted=True, status=DELETED, phase="", node="", ready=False)


def vm_renamed(s: VMState, e: m.VMRenamed, env: Stamped) -> VMState:
    done = replace(s, exists=False, deleted=True, status=DELETED, phase="", node="", ready=False)
    return replace(done, renamed_to=e.to)


def vm_undeleted(s: VMState, e: m.VMUndeleted, env: Stamped) -> VMState:
    return replace(s, exists=True, deleted=False, status=STOPPED)


def vm_start_requested(s: VMState, e: m.VMStartRequested, env: Stamped) -> VMState:
    # Like `virtctl start`, which sets `running: true`: a Halted VM becomes Always.
    strategy = "Always" if s.run_strategy == "Halted" else s.run_strategy
    spec = spec_says(s.spec, strategy) if strategy != s.run_strategy else s.spec
    return replace(
        s, status=STARTING, phase=PENDING, reason="", restart_required=False, paused=False,
        restart_message="",
        want_paused=e.paused, restarting=False, run_strategy=strategy, node="", vmi_uid="",
        ready=False, failures=s.failures if e.restart else 0, intent_version=env.version,
        spec=spec, vmi_since=env.time,
    )  # fmt: skip


def vm_stop_requested(s: VMState, e: m.VMStopRequested, env: Stamped) -> VMState:
    # Like `virtctl stop` (`running: false`): nothing restarts it afterwards.
    halted = s.run_strategy in ("Always", "RerunOnFailure")
    if not s.running and not halted:
        return s
    return replace(
        s,
        status=STOPPING if s.running else s.status,
        run_strategy="Halted" if halted else s.run_strategy,
        spec=spec_says(s.spec, "Halted") if halted else s.spec,
        restarting=False,
        intent_version=env.version,
        stop_grace=e.grace_period_seconds,
        stop_force=e.force,
    )


def vm_restart_requested(s: VMState, e: m.VMRestartRequested, env: Stamped) -> VMState:
    if not s.running:
        return s
    return replace(s, status=STOPPING, restarting=True, intent_version=env.version,
                   stop_grace=e.grace_period_seconds, stop_force=e.force)  # fmt: skip


def vm_pause_requested(
    s: VMState, e: m.VMPauseRequested | m.VMUnpauseRequested, env: Stamped
) -> VMState:
    return replace(s, want_paused=isinstance(e, m.VMPauseRequested), intent_version=env.version)


def vm_unschedulable(s: VMState, e: m.VMUnschedulable, env: Stamped) -> VMState:
    return replace(s, status=UNSCHEDULABLE, phase=SCHEDULING, reason=e.reason)


def launcher_created(s: VMState, e: m.LauncherCreated, env: Stamped) -> VMState:
    mig = s.migration
    if mig is not None and migrating(s) and e.node == mig.target and e.node != s.node:
        phase = SCHEDULED if mig.phase == SCHEDULING else mig.phase  # the target pod runs
        return replace(s, migration=replace(mig, phase=phase, target_pod=e.pod))
    return replace(s, phase=SCHEDULED) if s.phase in (PENDING, SCHEDULING) else s


def launcher_failed(s: VMState, e: m.LauncherFailed, env: Stamped) -> VMState:
    if s.migration and e.node == s.migration.target and e.node != s.node:
        # A failed migration target does not touch the running source; the migration fails.
        return replace(s, migration=with_migration(s, s.migration.id, reason=e.reason))
    return replace(s, phase=FAILED, ready=False, reason=e.reason)


def domain_started(s: VMState, e: m.DomainStarted, env: Stamped) -> VMState:
    if s.node and e.node != s.node:
        return s  # the target of a migration reports its own start
    # The node's observation is enough: the VMI is Running and ready (virtbus has no guest probes).
    status = s.status if s.status in (STOPPING, TERMINATING) else running_status(s)
    return replace(
        s, phase=RUNNING, node=e.node, status=status, ready=not s.paused, started=env.time,
        last_node=e.node,
    )  # fmt: skip


def vm_running(s: VMState, e: m.VMRunning, env: Stamped) -> VMState:
    return replace(
        s,
        phase=RUNNING,
        node=e.node,
        ready=not s.paused,
        failures=0,
        status=running_status(s),
        reason="",
    )


def domain_paused(s: VMState, e: m.DomainPaused, env: Stamped) -> VMState:
    status = MIGRATING if migrating(s) else PAUSED
    return replace(s, paused=True, ready=False, status=status, reason=e.reason)


def domain_resumed(s: VMState, e: m.DomainResumed, env: Stamped) -> VMState:
    return replace(
        s,
        paused=False,
        ready=s.phase == RUNNING,
        status=running_status(replace(s, paused=False)),
    )


def domain_stopped(s: VMState, e: m.DomainStopped, env: Stamped) -> VMState:
    if e.reason == "migrated" or (s.node and e.node != s.node):
        return s
    # Stopping only while a stop is under way; a VMI that ended by itself shows Stopped.
    status = s.status if s.status in (STOPPING, TERMINATING) else STOPPED
    return replace(
        s,
        phase=_STOP_PHASE.get(e.reason, FAILED),
        ready=False,
        paused=False,
        agent_connected=False,
        status=status,
        reason=f"{e.reason} ({e.detail})" if e.detail else e.reason,
    )


def domain_rebooted(s: VMState, e: m.DomainRebooted, env: Stamped) -> VMState:
    # A reboot is not a stop: the instance, its phase and its node stay.
    return replace(s, reset_done=max(s.reset_done, e.reset)) if e.reset else s


def vm_reset_requested(s: VMState, e: m.VMResetRequested, env: Stamped) -> VMState:
    return replace(s, reset_asked=env.version, reset_vmi=e.vmi_uid or s.vmi_uid)


def vm_soft_reboot_requested(s: VMState, e: m.VMSoftRebootRequested, env: Stamped) -> VMState:
    return replace(s, soft_reboot=s.vmi_uid, soft_reboot_version=env.version)


def soft_reboot_sent(s: VMState, e: m.SoftRebootSent, env: Stamped) -> VMState:
    return replace(s, soft_reboot="")


def guest_agent_changed(s: VMState, e: m.GuestAgentChanged, env: Stamped) -> VMState:
    if e.node == s.node:
        return replace(s, agent_connected=e.connected)
    mig = s.migration
    if mig is not None and migration_active(mig) and e.node == mig.target:
        # The target's agent connects before the VM is the target's: kept for its success.
        return replace(s, migration=replace(mig, target_agent=e.connected))
    return s  # a migration's source once it is over, or an instance already gone


def vm_stopped(s: VMState, e: m.VMStopped, env: Stamped) -> VMState:
    # A VMI applied on its own keeps its last phase (Succeeded, Failed) until it is deleted, as in
    # KubeVirt; a VM's instance is gone once it stopped.
    alone = s.source_kind == "VirtualMachineInstance" and s.phase in (SUCCEEDED, FAILED)
    return replace(
        s,
        phase=s.phase if alone else "",
        node="",
        vmi_uid="",
        ready=False,
        paused=False,
        status=STOPPED,
        reason=e.reason or s.reason,
        agent_connected=False,
        volumes={},  # a hotplugged volume does not outlive its instance
        hotplug={},
    )


def vm_start_failed(s: VMState, e: m.VMStartFailed, env: Stamped) -> VMState:
    return replace(s, status=e.status, phase=FAILED, ready=False, reason=e.reason)


def vm_failed(s: VMState, e: m.VMFailed, env: Stamped) -> VMState:
    return replace(
        s,
        phase=FAILED,
        ready=False,
        paused=False,
        failures=s.failures + 1,
        status=STOPPED,
        reason=e.reason,
        agent_connected=False,
        node="",  # the failed instance is concluded: nothing runs anywhere for it
        vmi_uid="",
        volumes={},
        hotplug={},
    )


def vm_backoff(s: VMState, e: m.VMBackoff, env: Stamped) -> VMState:
    until = env.time + timedelta(seconds=e.delay_seconds)
    return replace(s, status=CRASH_LOOP, failures=e.failures, backoff_until=until)


def launcher_deleted(s: VMState, e: m.LauncherDeleted, env: Stamped) -> VMState:
    mig = s.migration
    if mig is not None and mig.target_pod == e.pod and e.node == mig.target != s.node:
        return replace(s, migration=replace(mig, target_pod=""))  # a failed target cleaned up
    return s


def command_rejected(s: VMState, e: m.CommandRejected, env: Stamped) -> VMState:
    return replace(s, last_rejection=e.reason)
