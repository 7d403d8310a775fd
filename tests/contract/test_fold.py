"""Unit tests of the pure VM fold (`events.state.apply/fold/conditions`).

The orchestrator decides on this fold, the CLI prints it and the audit replays it, so each
transition is pinned here with KubeVirt's own strings: `status` is the VM's printableStatus,
`phase` the VMI's phase.
"""

from __future__ import annotations

import copy
import typing
from datetime import UTC, datetime, timedelta

import pytest
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope, seal
from events.names import Ref
from events.state import HANDLERS, Migration, VMState, apply, conditions, fold

VM = Ref.vm("a")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPEC = {"template": {"spec": {"domain": {"cpu": {"cores": 1}}}}}


def envelopes(*events: m.Event, start: int = 1, ref: Ref = VM) -> list[Envelope]:
    """Seal `events` as versions start, start+1, ... of `ref`; version v is at T0 + (v-1) s."""
    return [
        seal(e, ref=ref, version=v, prevhash="", source="/t", time=T0 + timedelta(seconds=v - 1))[0]
        for v, e in enumerate(events, start=start)
    ]


def run(*events: m.Event) -> VMState:
    return fold(envelopes(*events))


def step(s: VMState, event: m.Event) -> VMState:
    """Apply one more event as the next version."""
    return apply(s, envelopes(event, start=s.version + 1)[0])


def condition(s: VMState, kind: str) -> dict[str, str] | None:
    found = [c for c in conditions(s) if c["type"] == kind]
    assert len(found) <= 1, f"condition {kind} appears {len(found)} times"
    return found[0] if found else None


CREATED = m.VMCreated(spec=SPEC, labels={"app": "web"}, run_strategy="Manual")
RUNNING_ON_N1: tuple[m.Event, ...] = (
    CREATED,
    m.VMStartRequested(),
    m.VMScheduled(node="n1", vmi_uid="uid-1"),
    m.LauncherCreated(node="n1", pod="virt-launcher-a-x"),
    m.DomainStarted(node="n1"),
    m.VMRunning(node="n1"),
)


def running() -> VMState:
    s = run(*RUNNING_ON_N1)
    assert (s.status, s.phase, s.node, s.ready) == ("Running", "Running", "n1", True)
    return s


# --- create and start ----------------------------------------------------------------------------


def test_created_vm_is_stopped_without_a_vmi() -> None:
    s = run(CREATED)
    assert s.status == "Stopped"
    assert s.phase == ""
    assert s.exists and not s.deleted
    assert (s.namespace, s.name) == ("default", "a")
    assert s.spec == SPEC
    assert s.labels == {"app": "web"}
    assert s.run_strategy == "Manual"
    assert s.created == T0 == s.updated
    assert s.version == 1
    assert not s.running
    assert condition(s, "Ready") == {"type": "Ready", "status": "False", "reason": "VMINotExists"}


def test_start_flow_uses_kubevirt_phases_and_statuses() -> None:
    s = run(CREATED, m.VMStartRequested())
    assert (s.status, s.phase) == ("Starting", "Pending")
    assert s.running

    s = step(s, m.VMScheduled(node="n1", vmi_uid="uid-1"))
    assert (s.status, s.phase) == ("Starting", "Scheduling")
    assert (s.node, s.vmi_uid) == ("n1", "uid-1")

    s = step(s, m.LauncherCreated(node="n1", pod="virt-launcher-a-x"))
    assert (s.status, s.phase) == ("Starting", "Scheduled")

    s = step(s, m.DomainStarted(node="n1"))
    assert (s.status, s.phase, s.node) == ("Running", "Running", "n1")

    s = step(s, m.VMRunning(node="n1"))
    assert (s.status, s.phase, s.node) == ("Running", "Running", "n1")
    assert s.ready
    assert s.version == 6
    assert s.updated == T0 + timedelta(seconds=5)
    assert condition(s, "Ready") == {"type": "Ready", "status": "True", "reason": ""}
    assert condition(s, "Paused") is None


def test_launcher_created_after_running_does_not_move_phase_back() -> None:
    s = step(running(), m.LauncherCreated(node="n1", pod="virt-launcher-a-y"))
    assert s.phase == "Running"


# --- pause ---------------------------------------------------------------------------------------


def test_pause_and_unpause() -> None:
    s = step(running(), m.DomainPaused(node="n1"))
    assert s.status == "Paused"
    assert s.paused and not s.ready
    assert s.phase == "Running"
    assert condition(s, "Paused") == {"type": "Paused", "status": "True", "reason": "PausedByUser"}
    assert condition(s, "Ready")["status"] == "False"  # type: ignore[index]

    s = step(s, m.DomainResumed(node="n1"))
    assert s.status == "Running"
    assert not s.paused and s.ready
    assert condition(s, "Paused") is None
    assert condition(s, "Ready")["status"] == "True"  # type: ignore[index]


# --- stop ----------------------------------------------------------------------------------------


def test_stop_flow() -> None:
    s = step(running(), m.VMStopRequested(grace_period_seconds=30))
    assert s.status == "Stopping"
    assert s.phase == "Running"

    s = step(s, m.DomainStopped(node="n1", reason="shutdown"))
    assert s.phase == "Succeeded"
    assert not s.ready and not s.running

    s = step(s, m.VMStopped(reason="shutdown"))
    assert s.status == "Stopped"
    assert s.phase == ""
    assert s.node == "" and s.vmi_uid == ""
    assert not s.ready
    assert condition(s, "Ready")["status"] == "False"  # type: ignore[index]


def test_start_and_stop_patch_the_specs_run_field_as_virt_api_does() -> None:
    with_running = {**SPEC, "running": False}
    s = run(m.VMCreated(spec=with_running, run_strategy="Halted"), m.VMStartRequested())
    assert (s.spec["running"], s.run_strategy) == (True, "Always")
    assert s.spec["template"] == SPEC["template"] and with_running["running"] is False
    s = step(step(s, m.VMScheduled(node="n1", vmi_uid="u")), m.VMStopRequested())
    assert (s.spec["running"], s.run_strategy) == (False, "Halted")

    with_strategy = {**SPEC, "runStrategy": "Halted"}
    s = run(m.VMCreated(spec=with_strategy, run_strategy="Halted"), m.VMStartRequested())
    assert (s.spec["runStrategy"], "running" in s.spec) == ("Always", False)
    manual = run(CREATED, m.VMStartRequested())  # Manual stays Manual: the spec is left alone
    assert manual.spec == SPEC
    vmi = run(m.VMCreated(spec={"domain": {}}, run_strategy="Halted"), m.VMStartRequested())
    assert vmi.spec == {"domain": {}}  # a bare VMI's spec has no run field


def test_applying_running_false_to_a_started_vm_stops_it_like_kubectl_apply() -> None:
    from events import commands as c
    from orchestrator.decide import decide

    domain = {"resources": {"requests": {"memory": "64Mi"}}}
    seed = {"running": False, "template": {"spec": {"domain": domain}}}
    s = run(m.VMCreated(spec=seed, run_strategy="Halted"), m.VMStartRequested(),
            m.VMScheduled(node="n1", vmi_uid="u"), m.DomainStarted(node="n1"),
            m.VMRunning(node="n1"))  # fmt: skip
    events = decide(s, c.ApplyVM(name="a", spec=seed))
    assert [type(e) for e in events] == [m.VMSpecChanged, m.VMStopRequested]
    assert decide(s, c.ApplyVM(name="a", spec=s.spec)) == []  # what `get vm -o yaml` shows


def test_stop_requested_on_a_stopped_vm_changes_nothing_but_version() -> None:
    before = run(CREATED)
    after = step(before, m.VMStopRequested())
    assert after.status == "Stopped"
    assert replace(after, version=before.version, updated=before.updated) == before


def test_domain_stopped_from_another_node_is_ignored() -> None:
    before = running()
    after = step(before, m.DomainStopped(node="n9", reason="crashed"))
    assert (after.phase, after.status, after.ready) == ("Running", "Running", True)


@pytest.mark.parametrize(("reason", "phase"), [("shutdown", "Succeeded"), ("crashed", "Failed")])
def test_domain_that_stops_by_itself_leaves_the_vm_stopped(reason: str, phase: str) -> None:
    s = step(running(), m.DomainStopped(node="n1", reason=reason))
    assert s.phase == phase
    assert s.status == "Stopped"


# --- crash and backoff ---------------------------------------------------------------------------


def test_crash_loop() -> None:
    s = step(running(), m.DomainStopped(node="n1", reason="crashed"))
    assert s.phase == "Failed"
    assert s.reason == "crashed"
    assert not s.ready

    s = step(s, m.VMFailed(reason="domain crashed", node="n1"))
    assert s.failures == 1
    assert s.phase == "Failed"
    assert s.status == "Stopped"
    assert s.reason == "domain crashed"

    s = step(s, m.VMStartRequested(restart=True))
    s = step(s, m.VMFailed(reason="domain crashed again", node="n1"))
    assert s.failures == 2

    s = step(s, m.VMBackoff(delay_seconds=20.0, failures=2))
    assert s.status == "CrashLoopBackOff"
    assert s.failures == 2

    s = step(s, m.VMStartRequested(restart=True))
    assert s.failures == 2  # a restart by the controller keeps counting
    assert (s.status, s.phase) == ("Starting", "Pending")
    s = step(s, m.VMScheduled(node="n1", vmi_uid="uid-2"))
    s = step(s, m.VMRunning(node="n1"))
    assert s.failures == 0
    assert s.status == "Running"
    assert s.reason == ""


def test_launcher_failed_fails_the_vmi() -> None:
    s = step(running(), m.LauncherFailed(node="n1", pod="p", reason="OOMKilled", exit_code=137))
    assert s.phase == "Failed"
    assert not s.ready
    assert s.reason == "OOMKilled"


# --- start errors --------------------------------------------------------------------------------


def test_unschedulable() -> None:
    why = "0/3 nodes are available: 3 Insufficient memory."
    s = run(CREATED, m.VMStartRequested(), m.VMUnschedulable(reason=why))
    assert s.status == "ErrorUnschedulable"
    assert s.phase == "Scheduling"
    assert s.reason == why
    assert condition(s, "PodScheduled") == {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": why,
    }

    s = step(s, m.VMScheduled(node="n2", vmi_uid="uid-1"))
    assert s.status == "Starting"
    assert s.node == "n2"
    assert condition(s, "PodScheduled") is None


def test_start_failed_carries_kubevirt_status() -> None:
    s = run(
        CREATED,
        m.VMStartRequested(),
        m.VMStartFailed(reason="PVC default/disk-a not found", status="ErrorPvcNotFound"),
    )
    assert s.status == "ErrorPvcNotFound"
    assert s.reason == "PVC default/disk-a not found"
    assert not s.ready
    assert condition(s, "Ready") == {
        "type": "Ready",
        "status": "False",
        "reason": "PVC default/disk-a not found",
    }


# --- migration -----------------------------------------------------------------------------------


def test_migration_succeeds_and_moves_the_node() -> None:
    s = step(running(), m.MigrationScheduled(migration="mig-1", source="n1", target="n2"))
    assert s.status == "Migrating"
    assert s.migrations == 1
    assert s.migration is not None and s.migration.scheduled is not None  # the duration's start
    assert s.migration == Migration(
        "mig-1", "n1", "n2", phase="Scheduling", scheduled=s.migration.scheduled
    )

    s = step(s, m.LauncherCreated(node="n2", pod="virt-launcher-a-target"))
    assert s.phase == "Running"
    assert (s.migration.phase, s.migration.target_pod) == ("Scheduled", "virt-launcher-a-target")
    s = step(s, m.MigrationTargetReady(migration="mig-1", target="n2"))
    assert s.migration is not None and s.migration.phase == "TargetReady"
    s = step(s, m.MigrationStarted(migration="mig-1"))
    assert s.migration is not None and s.migration.phase == "Running"

    s = step(s, m.DomainStarted(node="n2", reason="migrated"))
    assert s.node == "n1", "the target's domain start must not move the VM before success"
    assert s.status == "Migrating"

    s = step(s, m.MigrationProgress(migration="mig-1", percent=42.5, data_total=100))
    assert s.migration is not None and s.migration.percent == 42.5
    s = step(s, m.MigrationProgress(migration="mig-0", percent=99.0))
    assert s.migration is not None and s.migration.percent == 42.5, "another migration's progress"
    assert s.status == "Migrating"
    assert s.ready

    s = step(s, m.MigrationSucceeded(migration="mig-1", source="n1", target="n2"))
    assert s.node == "n2"
    assert s.status == "Running"
    assert s.migration is not None
    assert (s.migration.phase, s.migration.percent) == ("Succeeded", 100.0)

    s = step(s, m.DomainStopped(node="n1", reason="migrated"))
    assert (s.phase, s.status, s.node, s.ready) == ("Running", "Running", "n2", True)


def test_migration_failed_stays_on_the_source() -> None:
    s = step(running(), m.MigrationScheduled(migration="mig-1", source="n1", target="n2"))
    s = step(s, m.LauncherFailed(node="n2", pod="virt-launcher-a-target", reason="ImagePull"))
    assert (s.phase, s.status, s.ready) == ("Running", "Migrating", True)

    s = step(s, m.MigrationFailed(migration="mig-1", reason="target pod failed"))
    assert s.status == "Running"
    assert s.node == "n1"
    assert s.phase == "Running"
    assert s.migration is not None
    assert (s.migration.phase, s.migration.reason) == ("Failed", "target pod failed")
    assert s.migrations == 1


def test_pause_during_migration_shows_migrating() -> None:
    s = step(running(), m.MigrationScheduled(migration="mig-1", source="n1", target="n2"))
    s = step(s, m.DomainPaused(node="n1"))
    assert s.paused
    assert s.status == "Migrating"


# --- delete --------------------------------------------------------------------------------------


def test_delete_and_undelete() -> None:
    s = run(CREATED, m.VMDeleteRequested())
    assert s.status == "Terminating"
    assert s.exists

    s = step(s, m.VMDeleted(disks=["disk-a"]))
    assert s.deleted and not s.exists
    assert s.status == "Deleted"
    assert (s.phase, s.node, s.ready) == ("", "", False)

    s = step(s, m.VMUndeleted())
    assert s.exists and not s.deleted
    assert s.status == "Stopped"
    assert s.spec == SPEC


def test_delete_requested_while_running_is_terminating() -> None:
    s = step(running(), m.VMDeleteRequested())
    assert s.status == "Terminating"


# --- snapshots and volumes -----------------------------------------------------------------------


def phases(s: VMState) -> dict[str, str]:
    return {name: snap.phase for name, snap in s.snapshots.items()}


def test_snapshot_phases_and_delete() -> None:
    s = run(
        CREATED,
        m.SnapshotRequested(snapshot="s1", node="node-a", spec={"running": True},
                            volumes=["disk0"], skipped={"cfg": "ephemeral"}),
        m.SnapshotRequested(snapshot="s2"),
        m.SnapshotRequested(snapshot="s3"),
    )  # fmt: skip
    assert phases(s) == {"s1": "InProgress", "s2": "InProgress", "s3": "InProgress"}
    s1 = s.snapshots["s1"]
    assert (s1.node, s1.spec, s1.volumes, s1.skipped) == (
        "node-a",
        {"running": True},
        ["disk0"],
        {"cfg": "ephemeral"},
    )

    s = step(s, m.SnapshotSucceeded(snapshot="s1", size_bytes=4096))
    s = step(s, m.SnapshotFailed(snapshot="s2", reason="freeze timed out"))
    assert phases(s) == {"s1": "Succeeded", "s2": "Failed", "s3": "InProgress"}
    assert (s.snapshots["s1"].size_bytes, s.snapshots["s2"].reason) == (4096, "freeze timed out")
    assert s.snapshots["s1"].ready_at is not None

    s = step(s, m.SnapshotDeleted(snapshot="s2"))
    assert phases(s) == {"s1": "Succeeded", "s3": "InProgress"}
    s = step(s, m.SnapshotDeleted(snapshot="nope"))
    assert phases(s) == {"s1": "Succeeded", "s3": "InProgress"}
    s = step(s, m.SnapshotSucceeded(snapshot="nope"))  # an unknown snapshot changes nothing
    assert phases(s) == {"s1": "Succeeded", "s3": "InProgress"}


def test_a_restore_brings_back_the_snapshots_spec_once_complete() -> None:
    s = run(CREATED, m.SnapshotRequested(snapshot="s1", spec={"runStrategy": "Halted", "x": 1}),
            m.SnapshotSucceeded(snapshot="s1"))  # fmt: skip
    s = step(s, m.VMSpecChanged(spec={"runStrategy": "Halted", "x": 2}, changed=["x"]))
    s = step(s, m.RestoreRequested(snapshot="s1", restore="r1", node="node-a"))
    assert s.restore is not None and not s.restore.complete
    assert s.spec["x"] == 2  # nothing changes before the volumes are back
    s = step(s, m.RestoreSucceeded(snapshot="s1", restore="r2"))  # not the current restore
    assert s.spec["x"] == 2
    s = step(s, m.RestoreSucceeded(snapshot="s1", restore="r1"))
    assert s.restore is not None and s.restore.complete
    assert s.spec == {"runStrategy": "Halted", "x": 1}
    s = step(s, m.RestoreRequested(snapshot="s1", restore="r3"))
    s = step(s, m.RestoreFailed(snapshot="s1", restore="r3", reason="disk busy"))
    assert s.restore is not None and (s.restore.complete, s.restore.reason) == (False, "disk busy")


def test_volume_hotplug_phases() -> None:
    s = step(running(), m.VolumeAttachRequested(volume={"name": "data"}, disk={"bus": "scsi"}))
    assert s.volumes == {"data": "Pending"}
    s = step(s, m.VolumeAttached(volume="data", node="n1"))
    assert s.volumes == {"data": "Ready"}
    s = step(s, m.VolumeDetachRequested(volume="data"))
    assert s.volumes == {"data": "Detaching"}
    s = step(s, m.VolumeDetached(volume="data", node="n1"))
    assert s.volumes == {}
    assert s.hotplug == {}


def test_hotplug_keeps_the_request_and_the_failure_and_ends_with_the_instance() -> None:
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    s = step(running(), m.VolumeAttachRequested(volume=volume, disk={"name": "data"}))
    plug = s.hotplug["data"]
    assert (plug.volume, plug.disk, plug.requested) == (volume, {"name": "data"}, s.version)
    s = step(s, m.VolumeAttachFailed(volume="data", reason='claim "data" not found'))
    assert s.volumes == {"data": "Failed"}
    assert s.hotplug["data"].reason == 'claim "data" not found'
    s = step(s, m.VolumeAttachRequested(volume={**volume, "name": "more"}, disk={}))
    s = step(s, m.VolumeAttached(volume="more"))
    s = step(s, m.VolumeDetachRequested(volume="more"))
    assert s.hotplug["more"].requested == s.version  # the detach is a request of its own
    s = step(s, m.VMStopped(reason="stopped"))
    assert (s.volumes, s.hotplug) == ({}, {})  # a hotplug does not outlive its instance


# --- spec changes --------------------------------------------------------------------------------


def test_spec_change_needing_restart_while_running() -> None:
    new_spec = {"template": {"spec": {"domain": {"cpu": {"cores": 4}}}}}
    s = step(
        running(),
        m.VMSpecChanged(
            spec=new_spec, changed=["spec.template.spec.domain.cpu.cores"], restart_required=True
        ),
    )
    assert s.spec == new_spec
    assert s.restart_required
    restart = condition(s, "RestartRequired")
    assert restart is not None
    assert restart["status"] == "True"
    assert "non-live-updatable" in restart["message"]
    assert s.status == "Running"

    s = step(s, m.VMSpecChanged(spec=new_spec, restart_required=False))
    assert s.restart_required, "a later live-updatable change must not clear RestartRequired"

    s = step(s, m.VMStopRequested())
    s = step(s, m.DomainStopped(node="n1", reason="shutdown"))
    s = step(s, m.VMStopped())
    s = step(s, m.VMStartRequested())
    assert not s.restart_required
    assert condition(s, "RestartRequired") is None


def test_spec_change_on_a_stopped_vm_needs_no_restart() -> None:
    s = run(CREATED, m.VMSpecChanged(spec={}, restart_required=True))
    assert not s.restart_required
    assert condition(s, "RestartRequired") is None


def test_spec_change_updates_labels_and_run_strategy_only_when_given() -> None:
    s = run(CREATED, m.VMSpecChanged(spec=SPEC))
    assert (s.labels, s.run_strategy) == ({"app": "web"}, "Manual")
    s = step(s, m.VMSpecChanged(spec=SPEC, run_strategy="Always", labels={}))
    assert (s.labels, s.run_strategy) == ({}, "Always")


# --- rejections and foreign events ---------------------------------------------------------------


def test_command_rejected_only_records_the_rejection() -> None:
    before = running()
    after = step(
        before,
        m.CommandRejected(command_id="c1", command="PauseVM", reason="VM is migrating"),
    )
    assert after.last_rejection == "VM is migrating"
    assert after.version == before.version + 1
    assert replace(after, last_rejection="", version=before.version, updated=before.updated) == (
        before
    )


def test_event_of_another_aggregate_changes_only_version() -> None:
    before = running()
    node_event = m.NodeRegistered(
        hypervisor="kvm", libvirt_uri="qemu:///system", cpus=8, memory_bytes=2**34
    )
    after = step(before, node_event)
    assert after.version == before.version + 1
    # `updated` follows every applied envelope; nothing else may move.
    assert replace(after, version=before.version, updated=before.updated) == before


# --- purity --------------------------------------------------------------------------------------


def test_apply_does_not_touch_its_input() -> None:
    s = run(CREATED, m.SnapshotRequested(snapshot="s1"))
    snapshot = copy.deepcopy(s)
    for event in (
        m.SnapshotSucceeded(snapshot="s1"),
        m.VolumeAttachRequested(volume={"name": "v"}, disk={}),
        m.VMStartRequested(),
        m.VMDeleted(),
    ):
        after = step(s, event)
        assert after is not s
        assert after != s
        assert s == snapshot
        assert phases(s) == {"s1": "InProgress"}
        assert s.volumes == {}


def test_fold_is_deterministic() -> None:
    history = envelopes(
        *RUNNING_ON_N1,
        m.MigrationScheduled(migration="mig-1", source="n1", target="n2"),
        m.MigrationSucceeded(migration="mig-1", source="n1", target="n2"),
        m.SnapshotRequested(snapshot="s1"),
        m.DomainPaused(node="n2"),
    )
    first, second = fold(history), fold(history)
    assert first == second
    assert first is not second
    assert (first.status, first.node, first.version) == ("Paused", "n2", len(history))
    assert fold(history[3:], fold(history[:3])) == first


def test_fold_of_nothing_is_the_empty_state() -> None:
    assert fold([]) == VMState()
    assert fold([], VMState(name="x")) == VMState(name="x")


def test_a_vm_created_starting_is_the_same_as_created_then_start_requested() -> None:
    spec = {"runStrategy": "Always", "template": {"spec": {}}}
    one = run(m.VMCreated(spec=spec, run_strategy="Always", start=True))
    two = run(m.VMCreated(spec=spec, run_strategy="Always"), m.VMStartRequested())
    assert (one.status, one.phase, one.run_strategy) == ("Starting", "Pending", "Always")
    # (the times are each event's own)
    assert replace(one, version=0, intent_version=0, updated=None, vmi_since=None) == replace(
        two, version=0, intent_version=0, updated=None, vmi_since=None
    )


def test_the_node_holding_a_vm_follows_its_migrations() -> None:
    """`last_node` (where a stopped VM's snapshot is taken) is where the VM ran or moved last."""
    s = running()
    assert s.last_node == "n1"
    s = step(s, m.MigrationScheduled(migration="mig-1", source="n1", target="n2"))
    s = step(s, m.MigrationSucceeded(migration="mig-1", source="n1", target="n2"))
    assert (s.node, s.last_node) == ("n2", "n2")
    s = step(s, m.VMStopRequested())
    s = step(s, m.DomainStopped(node="n2", reason="shutdown"))
    s = step(s, m.VMStopped(reason="stopped"))
    assert (s.node, s.last_node) == ("", "n2")
    s = step(s, m.MigrationScheduled(migration="mig-2", source="n2", target="n3", live=False))
    s = step(s, m.MigrationSucceeded(migration="mig-2", source="n2", target="n3", mode="cold"))
    assert (s.home, s.last_node) == ("n3", "n3")  # a cold move of the stopped VM


def test_each_handler_is_filed_under_the_event_it_takes() -> None:
    """The table in `events/state.py` is written by hand: a handler filed under another event's
    class would take events it was not written for."""
    for kind, handler in HANDLERS.items():
        takes = typing.get_type_hints(handler)["e"]
        assert kind is takes or kind in typing.get_args(takes), (kind, handler.__name__)
        assert kind.aggregate in ("vm", "*"), kind
