"""What the orchestrator runs by, read off the KubeVirt object: gates, the migration policy, the
eviction default, emulation; and what `--migrations` seeds. Pure: the folds and the placer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events import commands as c
from events import kubevirt as kv
from events import model as m
from events import work as w
from events.envelope import Envelope
from events.errors import ValidationError
from events.names import Ref
from events.nodes import NodeState
from events.state import VMState
from orchestrator.capacity import Capacity
from orchestrator.kubevirt import SEED_ACTOR, Settings, decide_kubevirt
from orchestrator.migrations import eviction_strategy
from orchestrator.scheduler import Request, Unschedulable, place

T0 = datetime(2026, 12, 7, tzinfo=UTC)
REF = Ref("kubevirt", "kubevirt", "kubevirt")


def applied(settings: Settings, spec: dict[str, object], *, version: int = 1) -> None:
    cmd = c.ApplyKubeVirt(name="kubevirt", namespace="kubevirt", spec=spec)
    event = decide_kubevirt(kv.KubeVirtState(), cmd)
    env = Envelope(id="", source="", type="", subject="kubevirt/kubevirt/kubevirt", time=T0,
                   version=version, data=event[0])  # fmt: skip
    settings.folded("virt.kubevirt.kubevirt.kubevirt", env)


def test_before_any_object_the_seed_configuration_holds() -> None:
    config = Settings().config
    assert (config.enabled("HostDisk"), config.enabled("Snapshot"), config.enabled("LiveMigration"),
            config.use_emulation, config.eviction_strategy, config.migrations) == (
        True, True, True, True, "None", w.MigrationPolicy())  # fmt: skip
    assert Settings().seed_command() is None  # nothing to seed without --migrations


def test_migrations_seed_the_object_once() -> None:
    policy = w.MigrationPolicy(parallel_per_cluster=1, bandwidth_bytes=1 << 30)
    settings = Settings(policy)
    assert settings.config.migrations == policy  # in force before the seed is folded
    seed = settings.seed_command()
    assert seed is not None and (seed.namespace, seed.name, seed.actor) == (
        "kubevirt", "kubevirt", SEED_ACTOR)  # fmt: skip
    assert seed.spec["configuration"]["migrations"] == {
        "bandwidthPerMigration": 1 << 30, "parallelMigrationsPerCluster": 1}  # fmt: skip
    applied(settings, seed.spec)
    assert settings.seed_command() is None  # the object says so: nothing more to apply
    assert settings.config.migrations == policy
    # An object that says otherwise is brought to the seed's migrations, its gates kept.
    applied(settings, {"configuration": {"developerConfiguration": {"featureGates": ["X"]}}},
            version=2)  # fmt: skip
    again = Settings(policy)
    again.objects = settings.objects
    reseed = again.seed_command()
    assert reseed is not None and reseed.spec["configuration"] == {
        "developerConfiguration": {"featureGates": ["X"]},
        "migrations": {"bandwidthPerMigration": 1 << 30, "parallelMigrationsPerCluster": 1},
    }


def test_gates_refuse_with_kubevirts_words_and_a_second_object_is_refused() -> None:
    settings = Settings()
    applied(settings, {"configuration": {"developerConfiguration": {
        "disabledFeatureGates": ["Snapshot"]}, "evictionStrategy": "LiveMigrate"}})  # fmt: skip
    vm = {"template": {"spec": {"volumes": [{"name": "a", "containerDisk": {}},
                                            {"name": "b", "hostDisk": {}}]}}}  # fmt: skip
    for cmd, spec, field, message in (
        (c.StartVM(name="x"), vm, "spec.template.spec.volumes[1].hostDisk",
         "HostDisk feature gate is not enabled"),
        (c.SnapshotVM(name="x", snapshot="s"), None, "kind", "snapshot feature gate not enabled"),
        (c.RestoreVM(name="x", snapshot="s"), None, "kind",
         "Snapshot/Restore feature gate not enabled"),
        (c.ApplyKubeVirt(name="other", namespace="kubevirt", spec={}),
         None, "metadata.name", "Kubevirt is already created"),
    ):  # fmt: skip
        with pytest.raises(ValidationError) as err:
            settings.admit(Ref.of(cmd.aggregate, cmd.name, cmd.namespace), cmd, spec)
        assert (err.value.field, err.value.message) == (field, message)
    settings.admit(REF, c.ApplyKubeVirt(name="kubevirt", namespace="kubevirt", spec={}), None)
    # The cluster's eviction strategy stands for VMs that set none.
    s = VMState(spec={"template": {"spec": {}}})
    assert eviction_strategy(s, cluster_default=settings.config.eviction_strategy) == "LiveMigrate"


def test_without_emulation_qemu_nodes_without_kvm_cannot_take_vms() -> None:
    nodes = {
        "tcg": NodeState(name="tcg", hypervisor="qemu", kvm=False, cpus=4, memory_bytes=1 << 30,
                         registered=T0, status="Ready"),
        "test": NodeState(name="test", hypervisor="test", cpus=4, memory_bytes=1 << 30,
                          registered=T0, status="Ready"),
    }  # fmt: skip
    views = Capacity(w.MigrationPolicy()).node_views(nodes, kvm_only=True)
    with pytest.raises(Unschedulable) as err:
        place(Request(node_name="tcg"), views)
    assert err.value.message == (
        "0/2 nodes are available: 1 Insufficient devices.kubevirt.io/kvm, 1 node(s) didn't match "
        "the requested node name.")  # fmt: skip
    assert place(Request(), views) == "test"
    assert place(Request(node_name="tcg"), Capacity(w.MigrationPolicy()).node_views(nodes)) == "tcg"


def test_applying_the_same_object_again_is_no_event() -> None:
    spec = {"configuration": {"evictionStrategy": "External"}}
    [event] = decide_kubevirt(kv.KubeVirtState(), c.ApplyKubeVirt(name="kubevirt", spec=spec))
    assert isinstance(event, m.KubeVirtApplied)
    assert event.changes == ["featureGates -DataVolumes", "featureGates -HostDisk",
                             "featureGates -LiveMigration", "useEmulation False",
                             "evictionStrategy External"]  # fmt: skip
    s = kv.KubeVirtState(exists=True, spec=spec)
    assert decide_kubevirt(s, c.ApplyKubeVirt(name="kubevirt", spec=spec)) == []
    with pytest.raises(ValidationError) as err:
        decide_kubevirt(s, c.ApplyKubeVirt(name="kubevirt", spec={"configuration": {
            "evictionStrategy": "Sometimes"}}))  # fmt: skip
    assert err.value.message == ("spec.configuration.evictionStrategy: 'Sometimes' is not one of "
                                 "None, LiveMigrate, LiveMigrateIfPossible, External")  # fmt: skip


def test_max_downtime_changes_only_behind_kubevirts_gates() -> None:
    def spec(gates: list[str], downtime: int) -> dict[str, object]:
        return {"configuration": {"developerConfiguration": {"featureGates": gates},
                                  "migrations": {"maxDowntimeMs": downtime}}}  # fmt: skip

    with pytest.raises(ValidationError) as err:
        decide_kubevirt(kv.KubeVirtState(), c.ApplyKubeVirt(name="kubevirt", spec=spec([], 50)))
    assert (err.value.message, err.value.field) == (
        "maxDowntimeMs cannot be modified without enabling the MigrationStallDetection or "
        "MigrationDowntimeTuning feature gate",
        "spec.configuration.migrations.maxDowntimeMs",
    )
    opened = spec(["MigrationDowntimeTuning"], 50)
    [event] = decide_kubevirt(kv.KubeVirtState(), c.ApplyKubeVirt(name="kubevirt", spec=opened))
    assert isinstance(event, m.KubeVirtApplied) and event.spec == opened
    assert kv.config_of(opened).migrations.max_downtime_ms == 50
    # Unchanged, it may stay once the gate is gone; `--migrations` seeds it regardless.
    held = kv.KubeVirtState(exists=True, spec=opened)
    assert decide_kubevirt(held, c.ApplyKubeVirt(name="kubevirt", spec=spec([], 50)))
    seeded = c.ApplyKubeVirt(name="kubevirt", spec=spec([], 70), actor=SEED_ACTOR)
    assert decide_kubevirt(kv.KubeVirtState(), seeded)
