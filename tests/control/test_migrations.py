"""Migration decisions and the fold, pure: admission, the phase walk, queueing, cancel, drain.

No bus, no nodes: `decide_migrate`, `migration_step` and the VM fold are pure functions, so each
rule is checked on a state built from events, the way the orchestrator builds it.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events import commands as c
from events import model as m
from events import work as w
from events.envelope import Envelope, Recorded
from events.errors import ValidationError
from events.nodes import READY, NodeState
from events.state import VMState, apply
from orchestrator.folded import Folded
from orchestrator.migrations import (
    Cluster,
    decide_migrate,
    load_policy,
    migration_step,
    policy_from_config,
)
from orchestrator.scheduler import NodeView

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {"template": {"spec": {"domain": {"resources": {"requests": {
    "memory": "1Gi"}}}}}}  # fmt: skip


def step(s: VMState, e: m.Event) -> VMState:
    env = Envelope(id="", source="", type="", subject="vm/default/a",
                   time=T0 + timedelta(seconds=s.version), version=s.version + 1,
                   data=e)  # type: ignore[arg-type]  # fmt: skip
    return apply(s, env)


def running(node: str = "n1") -> VMState:
    s = VMState()
    for e in (m.VMCreated(spec=SPEC), m.VMStartRequested(), m.VMScheduled(node=node, vmi_uid="u1"),
              m.LauncherCreated(node=node, pod="p1"), m.DomainStarted(node=node)):  # fmt: skip
        s = step(s, e)
    assert (s.status, s.phase, s.node) == ("Running", "Running", node)
    return s


def node(name: str, *, uri: str = "", status: str = READY, draining: bool = False) -> NodeState:
    return NodeState(name=name, status=status, migration_uri=uri, cpus=4, memory_bytes=8 << 30,
                     registered=T0, draining=draining, cordoned=draining,
                     drain_requested=T0 if draining else None)  # fmt: skip


def cluster(*nodes: NodeState, free: bool = True) -> Cluster:
    views = [NodeView(name=n.name, cpus=n.cpus, memory_bytes=n.memory_bytes,
                      schedulable=n.schedulable) for n in nodes]  # fmt: skip
    return Cluster(nodes={n.name: n for n in nodes}, views=lambda: views,
                   slot_free=lambda _: free)  # fmt: skip


QEMU = (node("n1", uri="qemu+unix:///a"), node("n2", uri="qemu+unix:///b"))


def test_the_fold_walks_kubevirts_phases_and_shows_migrating() -> None:
    s = step(running(), m.MigrationRequested(migration="mig", target_node=""))
    assert (s.migration.phase, s.status, s.migrations) == ("Pending", "Running", 1)  # type: ignore[union-attr]
    s = step(s, m.MigrationScheduled(migration="mig", source="n1", target="n2"))
    assert (s.migration.phase, s.status, s.migrations) == ("Scheduling", "Migrating", 1)  # type: ignore[union-attr]
    s = step(s, m.LauncherCreated(node="n2", pod="target-pod"))
    assert (s.migration.phase, s.migration.target_pod, s.node) == ("Scheduled", "target-pod", "n1")  # type: ignore[union-attr]
    for e, phase in ((m.MigrationTargetPreparing(migration="mig", target="n2"), "PreparingTarget"),
                     (m.MigrationTargetReady(migration="mig", target="n2"), "TargetReady"),
                     (m.MigrationStarted(migration="mig"), "Running")):  # fmt: skip
        s = step(s, e)
        assert (s.migration.phase, s.status) == (phase, "Migrating")  # type: ignore[union-attr]
    s = step(s, m.MigrationCancelRequested(migration="mig"))
    assert s.migration is not None and s.migration.cancel
    s = step(s, m.MigrationFailed(migration="mig", reason="operation aborted", aborted=True))
    assert (s.migration.phase, s.status, s.node, s.phase) == ("Failed", "Running", "n1", "Running")  # type: ignore[union-attr]
    s = step(s, m.LauncherDeleted(node="n2", pod="target-pod"))
    assert s.migration is not None and s.migration.target_pod == ""


def test_a_stopped_vms_cold_migration_moves_its_home() -> None:
    s = step(VMState(), m.VMCreated(spec=SPEC))
    [sched, done] = decide_migrate(s, c.MigrateVM(name="a", id="x"), nodes=cluster(*QEMU).views())
    assert isinstance(sched, m.MigrationScheduled) and not sched.live
    assert isinstance(done, m.MigrationSucceeded) and done.mode == "cold"
    s = step(step(s, sched), done)
    assert (s.status, s.home, s.node, s.phase) == ("Stopped", "n1", "", "")


@pytest.mark.parametrize(
    ("state", "cmd", "reason"),
    [
        (step(step(VMState(), m.VMCreated(spec=SPEC)), m.VMStartRequested()),
         c.MigrateVM(name="a"), "VM is not running"),
        (step(running(), m.MigrationRequested(migration="m1")), c.MigrateVM(name="a"),
         "in-flight migration detected. Active migration job (m1) is currently already in "
         "progress for VMI a."),
        (running(), c.MigrateVM(name="a", target_node="n1"),
         'the VMI is already running on node "n1"; pick another target'),
        (running(), c.MigrateVM(name="a", target_node="n9"), 'nodes "n9" not found'),
        (running(), c.MigrateVM(name="a", migration="-bad"), "metadata.name: '-bad' is not a"),
    ],
)  # fmt: skip
def test_admission_rejects_with_kubevirts_words(state: VMState, cmd: c.MigrateVM,
                                                reason: str) -> None:  # fmt: skip
    with pytest.raises(ValidationError) as err:
        decide_migrate(state, cmd, nodes=cluster(*QEMU).views())
    assert err.value.message.startswith(reason)


def test_a_paused_vm_may_migrate() -> None:
    s = step(running(), m.DomainPaused(node="n1"))
    [e] = decide_migrate(s, c.MigrateVM(name="a", id="x"), nodes=cluster(*QEMU).views())
    assert isinstance(e, m.MigrationRequested) and e.migration.startswith("kubevirt-migrate-vm-")


def test_a_queued_migration_waits_for_a_slot_then_is_scheduled_live() -> None:
    s = step(running(), m.MigrationRequested(migration="mig"))
    assert migration_step(s, cluster(*QEMU, free=False)) == ([], [])  # Pending: queued
    [sched], work = migration_step(s, cluster(*QEMU))  # type: ignore[misc]
    assert sched == m.MigrationScheduled(migration="mig", source="n1", target="n2", live=True)
    assert work == []
    test_nodes = (node("n1"), node("n2"))  # the test driver announces no migration URI
    [sched], _ = migration_step(s, cluster(*test_nodes))  # type: ignore[misc]
    assert isinstance(sched, m.MigrationScheduled) and not sched.live


def test_each_phase_sends_its_work_to_the_right_node() -> None:
    s = step(running(), m.MigrationRequested(migration="mig"))
    s = step(s, m.MigrationScheduled(migration="mig", source="n1", target="n2"))
    _, [prepare] = migration_step(s, cluster(*QEMU))  # type: ignore[misc]
    assert isinstance(prepare, w.PrepareTarget) and prepare.node == "n2"
    s = step(s, m.MigrationTargetReady(migration="mig", target="n2"))
    _, [source] = migration_step(s, cluster(*QEMU))  # type: ignore[misc]
    assert isinstance(source, w.MigrateSource) and source.node == "n1"
    assert source.target_uri == "qemu+unix:///b" and source.policy == w.MigrationPolicy()
    s = step(step(s, m.MigrationStarted(migration="mig")), m.MigrationCancelRequested(
        migration="mig"))  # fmt: skip
    _, [_, abort] = migration_step(s, cluster(*QEMU))  # type: ignore[misc]
    assert isinstance(abort, w.AbortMigration) and abort.node == "n1"
    assert abort.msg_id != source.msg_id


def test_cancel_before_the_job_and_a_lost_target_fail_the_migration() -> None:
    s = step(running(), m.MigrationRequested(migration="mig"))
    [failed], _ = migration_step(step(s, m.MigrationCancelRequested(migration="mig")),
                                 cluster(*QEMU))  # type: ignore[misc]  # fmt: skip
    assert isinstance(failed, m.MigrationFailed) and failed.aborted
    s = step(s, m.MigrationScheduled(migration="mig", source="n1", target="n2"))
    lost = (QEMU[0], node("n2", uri="qemu+unix:///b", status="NotReady"))
    [failed], _ = migration_step(s, cluster(*lost))  # type: ignore[misc]
    assert isinstance(failed, m.MigrationFailed) and failed.reason == "target node n2 was lost"
    s = step(s, m.LauncherFailed(node="n2", pod="tp", reason="launcher exited with code 1"))
    [failed], _ = migration_step(s, cluster(*QEMU))  # type: ignore[misc]
    assert failed == m.MigrationFailed(
        migration="mig", reason="target launcher failed: launcher exited with code 1"
    )


@pytest.mark.parametrize(
    ("strategy", "run_strategy", "expected"),
    [
        ("LiveMigrate", "Always", m.MigrationRequested),
        ("LiveMigrateIfPossible", "Always", m.MigrationRequested),
        ("None", "Always", m.VMRestartRequested),
        ("None", "Manual", m.VMStopRequested),
    ],
)
def test_a_draining_node_evicts_per_strategy(strategy: str, run_strategy: str,
                                             expected: type[m.Event]) -> None:  # fmt: skip
    spec = {**SPEC, "template": {"spec": {**SPEC["template"]["spec"],
                                          "evictionStrategy": strategy}}}  # fmt: skip
    s = step(running(), m.VMSpecChanged(spec=spec, run_strategy=run_strategy))
    draining = (node("n1", uri="qemu+unix:///a", draining=True), QEMU[1])
    [e], _ = migration_step(s, cluster(*draining))  # type: ignore[misc]
    assert isinstance(e, expected)
    if isinstance(e, m.MigrationRequested):
        assert e.migration.startswith("kubevirt-evacuation-") and e.reason == "node n1 is drained"


def test_a_stop_calls_the_migration_off() -> None:
    s = step(running(), m.MigrationRequested(migration="mig"))
    s = step(s, m.MigrationScheduled(migration="mig", source="n1", target="n2"))
    stopping = step(s, m.VMStopRequested())
    [failed], _ = migration_step(stopping, cluster(*QEMU))  # type: ignore[misc]
    assert failed == m.MigrationFailed(migration="mig", reason="the VM is being stopped",
                                       aborted=True)  # fmt: skip
    s = step(step(s, m.MigrationTargetReady(migration="mig", target="n2")),
             m.MigrationStarted(migration="mig"))  # fmt: skip
    events, [abort] = migration_step(step(s, m.VMDeleteRequested()), cluster(*QEMU))  # type: ignore[misc]
    assert events == [] and isinstance(abort, w.AbortMigration)
    assert (abort.node, abort.reason) == ("n1", "the VM is being deleted")


def test_the_controller_counts_slots_per_cluster_and_per_source_node() -> None:
    """KubeVirt's limits: 5 migrations in the cluster, 2 leaving any one node."""
    ctrl = Folded(None, stream="VIRT_EVENTS")  # type: ignore[arg-type]  # folding needs no bus
    seq = 0

    def fold(vm: str, node: str, *events: m.Event) -> None:
        nonlocal seq
        s = ctrl.vms.get(f"virt.vm.default.{vm}") or VMState()
        for e in events:
            seq += 1
            env = Envelope(id="", source="", type="", subject=f"vm/default/{vm}", time=T0,
                           version=s.version + 1, data=e)  # type: ignore[arg-type]  # fmt: skip
            ctrl._fold(Recorded(env, seq, f"virt.vm.default.{vm}.{m.TOKEN[type(e)]}", ""))
            s = ctrl.vms[f"virt.vm.default.{vm}"]

    def start_migrating(vm: str, source: str) -> None:
        fold(vm, source, m.VMCreated(spec=SPEC), m.VMStartRequested(),
             m.VMScheduled(node=source, vmi_uid=vm), m.DomainStarted(node=source),
             m.MigrationRequested(migration=f"{vm}-m"),
             m.MigrationScheduled(migration=f"{vm}-m", source=source,
                                  target="elsewhere"))  # fmt: skip

    start_migrating("a1", "n1")
    assert ctrl.capacity.slot_free("n1")
    start_migrating("a2", "n1")
    assert not ctrl.capacity.slot_free("n1") and ctrl.capacity.slot_free("n2")  # 2 out of n1
    for i in range(3):
        start_migrating(f"b{i}", f"n{i + 2}")
    assert not ctrl.capacity.slot_free("n9")  # 5 in the cluster
    fold("a1", "n1", m.MigrationSucceeded(migration="a1-m", source="n1", target="elsewhere"))
    assert ctrl.capacity.slot_free("n1") and ctrl.capacity.slot_free("n9")  # one ended: any gets it
    fold("q", "n1", m.VMCreated(spec=SPEC), m.VMStartRequested(),
         m.VMScheduled(node="n1", vmi_uid="q"), m.DomainStarted(node="n1"),
         m.MigrationRequested(migration="q-m"))  # fmt: skip
    assert ctrl.capacity.slot_free("n1")  # a queued (Pending) migration holds no slot


def test_the_policy_reads_kubevirts_migration_settings(tmp_path: Path) -> None:
    assert policy_from_config({}) == w.MigrationPolicy()  # KubeVirt's defaults
    assert w.MigrationPolicy() == w.MigrationPolicy(
        bandwidth_bytes=64 << 20, completion_timeout_per_gib=150, allow_auto_converge=False,
        allow_post_copy=False, parallel_per_cluster=5, parallel_outbound_per_node=2,
    )  # fmt: skip
    f = tmp_path / "migrations.yaml"
    f.write_text("migrations:\n  bandwidthPerMigration: 1Gi\n  allowPostCopy: true\n"
                 "  parallelMigrationsPerCluster: 1\n  maxDowntimeMs: 50\n")  # fmt: skip
    p = load_policy(f)
    assert (p.bandwidth_bytes, p.allow_post_copy, p.parallel_per_cluster, p.max_downtime_ms) == (
        1 << 30, True, 1, 50)  # fmt: skip
    for doc, field, why in (
        ({"bandwidthPerMigration": "fast"}, "migrations.bandwidthPerMigration", "fast"),
        ({"allowPostCopy": "yes"}, "migrations.allowPostCopy", "is not true or false"),
        ({"parallelMigrationsPerCluster": 0}, "migrations.parallelMigrationsPerCluster",
         "is not a positive integer"),
        ({"progressTimeout": 150}, "migrations.progressTimeout", "unknown; use one of"),
    ):  # fmt: skip
        with pytest.raises(ValidationError) as err:
            policy_from_config(doc)
        assert err.value.field == field and why in err.value.message
    f.write_text("migrations: [")
    with pytest.raises(ValidationError, match="migrations: "):
        load_policy(f)


def test_up_refuses_bad_migration_settings_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "migrations.yaml"
    bad.write_text("allowPostCopy: maybe\n")
    virtbus = Path(sys.executable).parent / "virtbus"
    args = [str(virtbus), "up", "--migrations", str(bad), "--data-dir", str(tmp_path / "d")]
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "migrations.allowPostCopy: 'maybe' is not true or false" in done.stderr
    assert not (tmp_path / "d").exists()  # no server was started
