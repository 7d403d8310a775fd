"""The VM fold's migration handlers: a VirtualMachineInstanceMigration from request to outcome.

Pure functions of the state and one event, put into the fold's table by `events/state.py`. Every
attempt stays in the log; the state keeps the current or last one (`VMState.migration`). What the
launchers and domains of a migration's target report is folded with the lifecycle
(`events/fold_lifecycle.py`).
"""

from __future__ import annotations

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.vmstate import (
    FAILED,
    MIGRATING,
    PAUSED,
    PENDING,
    PREPARING_TARGET,
    RUNNING,
    SCHEDULING,
    SUCCEEDED,
    TARGET_READY,
    Migration,
    VMState,
    running_status,
    with_migration,
)


def migration_progress(s: VMState, e: m.MigrationProgress, env: Stamped) -> VMState:
    return replace(s, migration=with_migration(s, e.migration, percent=e.percent))


def migration_requested(s: VMState, e: m.MigrationRequested, env: Stamped) -> VMState:
    mig = Migration(e.migration, s.node, e.target_node, phase=PENDING, requested=env.time)
    return replace(s, migration=mig, migrations=s.migrations + 1)


def migration_scheduled(s: VMState, e: m.MigrationScheduled, env: Stamped) -> VMState:
    if s.migration is not None and s.migration.id == e.migration:  # the queued request moves on
        mig = replace(s.migration, source=e.source, target=e.target, live=e.live,
                      phase=SCHEDULING, scheduled=env.time, policy=e.policy)  # fmt: skip
        return replace(s, migration=mig, status=MIGRATING)
    mig = Migration(e.migration, e.source, e.target, live=e.live, scheduled=env.time,
                    policy=e.policy)  # fmt: skip
    status = MIGRATING if s.running else s.status  # a stopped VM's definition moves quietly
    return replace(s, migration=mig, migrations=s.migrations + 1, status=status)


def migration_cancel_requested(s: VMState, e: m.MigrationCancelRequested, env: Stamped) -> VMState:
    return replace(s, migration=with_migration(s, e.migration, cancel=True))


def migration_target_preparing(s: VMState, e: m.MigrationTargetPreparing, env: Stamped) -> VMState:
    return replace(s, migration=with_migration(s, e.migration, phase=PREPARING_TARGET))


def migration_target_ready(s: VMState, e: m.MigrationTargetReady, env: Stamped) -> VMState:
    return replace(s, migration=with_migration(s, e.migration, phase=TARGET_READY))


def migration_started(s: VMState, e: m.MigrationStarted, env: Stamped) -> VMState:
    return replace(s, migration=with_migration(s, e.migration, phase=RUNNING))


def migration_succeeded(s: VMState, e: m.MigrationSucceeded, env: Stamped) -> VMState:
    if s.migration is None or s.migration.id != e.migration:
        return s
    mig = with_migration(s, e.migration, phase=SUCCEEDED, percent=100.0, target_pod="")
    if not s.running:  # a stopped VM: its next start goes to the target
        return replace(s, migration=mig, home=e.target, last_node=e.target)
    # The agent as the target last told of it (before the VM was the target's); untold, the
    # guest's agent answers on as it did.
    told = s.migration.target_agent
    return replace(s, migration=mig, node=e.target, status=PAUSED if s.paused else RUNNING,
                   home=e.target if s.home else "", last_node=e.target,
                   agent_connected=s.agent_connected if told is None else told)  # fmt: skip


def migration_failed(s: VMState, e: m.MigrationFailed, env: Stamped) -> VMState:
    after = replace(s, migration=with_migration(s, e.migration, phase=FAILED, reason=e.reason))
    status = running_status(after) if s.status == MIGRATING else s.status
    return replace(s, migration=after.migration, status=status)
