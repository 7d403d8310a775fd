"""The KubeVirt object: applied, listed, its history; its gates hold commands with KubeVirt's
words; `--migrations` seeds it; a second one is refused."""

from __future__ import annotations

import getpass
from pathlib import Path

from clirun import Result, virtbus
from driverstack import Stack, driver_stack

from events import work as w

NO_GATES = """\
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata: {name: kubevirt, namespace: kubevirt}
spec:
  imagePullPolicy: IfNotPresent
  configuration:
    developerConfiguration:
      featureGates: [LiveMigration]
      disabledFeatureGates: [Snapshot]
    evictionStrategy: LiveMigrate
    migrations: {parallelMigrationsPerCluster: 1, progressTimeout: 150}
"""
SEED_GATES = """\
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata: {name: kubevirt, namespace: kubevirt}
spec:
  configuration:
    developerConfiguration:
      featureGates: [DataVolumes, LiveMigration, HostDisk]
"""
HOST_DISK_VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: hd}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        resources: {requests: {memory: 64Mi}}
        devices: {disks: [{name: d, disk: {bus: virtio}}]}
      volumes: [{name: d, hostDisk: {path: /tmp/hd.img, type: DiskOrCreate, capacity: 1Gi}}]
"""
_DEPRECATED = (
    'Warning: feature gate LiveMigration is deprecated (feature state is "General '
    'Availability"), therefore it can be safely removed and is redundant. For more info, please '
    "look at: https://github.com/kubevirt/kubevirt/blob/main/docs/deprecation.md\n"
)


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def test_the_kubevirt_object_gates_features_and_keeps_its_history(stack: Stack) -> None:
    # Before any apply: the seed's configuration, shown as the object KubeVirt installs.
    shown = (await cli(stack, "get", "kubevirt", "-n", "kubevirt", "-o", "json")).ok().json()
    assert shown["items"][0]["metadata"]["name"] == "kubevirt"
    assert shown["items"][0]["status"]["enabledFeatureGates"] == [
        "CommonInstancetypesDeploymentGate", "DataVolumes", "ExpandDisks", "HostDisk",
        "HotplugNICs", "InstancetypeReferencePolicy", "LiveMigration", "PanicDevices", "Snapshot",
        "VMExport", "VMLiveUpdateFeatures",
    ]  # fmt: skip
    assert (await cli(stack, "apply", "-f", "-", stdin=HOST_DISK_VM)).ok().out == (
        "virtualmachine.kubevirt.io/hd created\n"
    )

    done = (await cli(stack, "apply", "-f", "-", stdin=NO_GATES)).ok()
    assert done.out == "kubevirt.kubevirt.io/kubevirt configured\n"
    # (imagePullPolicy IfNotPresent is KubeVirt's default: nothing to warn about)
    assert done.err == (
        _DEPRECATED
        + "Warning: spec.configuration.migrations.progressTimeout: recorded; virtbus does not "
        "act on it\n"
    )
    assert (await cli(stack, "apply", "-f", "-", stdin=NO_GATES)).ok().out == (
        "kubevirt.kubevirt.io/kubevirt unchanged\n"
    )
    # HostDisk (Alpha) is off once not listed: apply and start refused with KubeVirt's words.
    refused = await cli(stack, "apply", "-f", "-", stdin=HOST_DISK_VM.replace("hd}", "hd2}"))
    assert (refused.code, refused.err) == (1, "error: hd2: HostDisk feature gate is not enabled\n")
    refused = await cli(stack, "start", "hd")
    assert (refused.code, refused.err) == (1, "error: HostDisk feature gate is not enabled\n")
    # Snapshot (Beta) is on unless disabled: it is.
    refused = await cli(stack, "snapshot", "hd", "snap")
    assert (refused.code, refused.err) == (1, "error: snapshot feature gate not enabled\n")
    # One KubeVirt object per cluster.
    other = NO_GATES.replace("name: kubevirt,", "name: second,")
    refused = await cli(stack, "apply", "-f", "-", stdin=other)
    assert refused.err.endswith("error: second: Kubevirt is already created\n")
    refused = await cli(stack, "delete", "kubevirt", "kubevirt", "-n", "kubevirt")
    assert refused.err == (
        "error: deleting kubevirts.kubevirt.io is not supported by virtbus: it would uninstall "
        "KubeVirt; apply it again to change the configuration\n"
    )

    got = (await cli(stack, "get", "kv", "-n", "kubevirt", "-o", "json")).ok().json()
    status = got["items"][0]["status"]
    assert (status["evictionStrategy"], status["migrations"], status["useEmulation"]) == (
        "LiveMigrate", {"parallelMigrationsPerCluster": 1}, False)  # fmt: skip
    assert status["enabledFeatureGates"] == [
        "CommonInstancetypesDeploymentGate", "ExpandDisks", "HotplugNICs",
        "InstancetypeReferencePolicy", "LiveMigration", "PanicDevices", "VMExport",
        "VMLiveUpdateFeatures",
    ]  # fmt: skip
    assert (await cli(stack, "apply", "-f", "-", stdin=SEED_GATES)).ok().out == (
        "kubevirt.kubevirt.io/kubevirt configured\n"
    )
    assert (await cli(stack, "start", "hd")).ok().out == "VM hd was scheduled to start\n"

    # Who changed the configuration, when, and what changed.
    items = (await cli(stack, "history", "kubevirt/kubevirt", "-o", "json")).ok().json()["items"]
    applied = [(i["actor"], i["summary"]) for i in items
               if i["type"] == "io.virtbus.kubevirt.applied.v1"]  # fmt: skip
    me = getpass.getuser()
    assert applied == [
        (me, "spec changed, changes=['featureGates -DataVolumes', 'featureGates -HostDisk', "
             "'disabledFeatureGates +Snapshot', 'useEmulation False', 'evictionStrategy "
             "LiveMigrate', \"migrations {'parallelMigrationsPerCluster': 1}\"]"),
        (me, "spec changed, changes=['featureGates +DataVolumes', 'featureGates +HostDisk', "
             "'disabledFeatureGates -Snapshot', 'evictionStrategy None', 'migrations {}']"),
    ]  # fmt: skip
    rejected = [i["summary"] for i in items if i["category"] == "Rejection"]
    assert rejected == []  # the second object's refusal is on its own history
    table = (await cli(stack, "get", "kubevirt", "-A")).ok().out
    assert table.splitlines()[0].split() == ["NAMESPACE", "NAME", "AGE", "PHASE"]


async def test_migrations_seed_the_kubevirt_object(tmp_path: Path) -> None:
    policy = w.MigrationPolicy(parallel_per_cluster=1, allow_post_copy=True)
    async with driver_stack(tmp_path, policy=policy) as st:
        got = await cli(st, "get", "kubevirt", "kubevirt", "-n", "kubevirt", "-o", "json")
        obj = got.ok().json()
        assert obj["spec"]["configuration"] == {
            "developerConfiguration": {"featureGates": ["DataVolumes", "LiveMigration",
                                                       "HostDisk"], "useEmulation": True},
            "migrations": {"allowPostCopy": True, "parallelMigrationsPerCluster": 1},
        }  # fmt: skip
        items = (await cli(st, "history", "kubevirt/kubevirt", "-o", "json")).ok().json()["items"]
        assert [(i["type"], i["actor"]) for i in items] == [
            ("io.virtbus.kubevirt.applied.v1", "virtbus-orchestrator --migrations")]  # fmt: skip
