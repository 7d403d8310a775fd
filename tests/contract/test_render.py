"""Pure tests of events.render: KubeVirt's object shapes, kubectl's tables and AGE strings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from msgspec.structs import replace

from events.nodes import NodeState
from events.render import (
    age,
    as_list,
    human_duration,
    node_object,
    node_table,
    quantity,
    to_json,
    to_yaml,
    vm_object,
    vm_table,
    vmi_object,
    vmi_table,
)
from events.state import Migration, VMState

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPEC = {
    "runStrategy": "Always",
    "template": {
        "metadata": {"labels": {"kubevirt.io/vm": "web"}},
        "spec": {"domain": {"cpu": {"cores": 2}}},
    },
}
RUNNING = VMState(
    namespace="default", name="web", version=4, exists=True, spec=SPEC, labels={"app": "web"},
    run_strategy="Always", created=NOW - timedelta(seconds=45), status="Running",
    phase="Running", node="node-a", vmi_uid="uid-1", ready=True,
)  # fmt: skip
STOPPED = VMState(
    namespace="default", name="db-primary", version=1, exists=True, spec={"running": False},
    created=NOW - timedelta(minutes=3, seconds=12),
)  # fmt: skip
NODE = NodeState(
    name="node-a", version=2, registered=NOW - timedelta(days=2), hypervisor="qemu",
    libvirt_uri="qemu:///system", cpus=8, memory_bytes=16 * 2**30, kvm=True,
    labels={"zone": "a", "gpu": "no"}, status="Ready",
)  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-0.5, "0s"), (-3, "<invalid>"), (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"),
        (192, "3m12s"), (599, "9m59s"), (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"),
        (5.5 * 3600, "5h30m"), (8 * 3600 + 59, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"),
        (53 * 3600, "2d5h"), (8 * 86400, "8d"), (400 * 86400, "400d"), (730 * 86400, "2y"),
        (740 * 86400, "2y10d"), (9 * 365 * 86400, "9y"),
    ],
)  # fmt: skip
def test_human_duration_follows_kubectl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_age_without_a_timestamp_is_unknown() -> None:
    assert age(None, NOW) == "<unknown>"
    assert age(NOW - timedelta(hours=5), NOW) == "5h"


def test_quantity_uses_the_largest_exact_binary_suffix_else_a_decimal_one() -> None:
    sizes = (0, 1000, 2048, 16 * 2**30, 1536 * 2**20, 5 * 10**9, 2500 * 10**6, 1001)
    assert [quantity(n) for n in sizes] == [
        "0", "1k", "2Ki", "16Gi", "1536Mi", "5G", "2500M", "1001",
    ]  # fmt: skip


def test_vm_object_has_kubevirts_shape() -> None:
    obj = vm_object(replace(RUNNING, failures=2))
    assert (obj["apiVersion"], obj["kind"]) == ("kubevirt.io/v1", "VirtualMachine")
    assert obj["metadata"] == {
        "name": "web", "namespace": "default", "creationTimestamp": "2024-05-01T11:59:15Z",
        "labels": {"app": "web"}, "generation": 4, "resourceVersion": "4",
    }  # fmt: skip
    assert obj["spec"] == SPEC
    assert obj["status"] == {
        "printableStatus": "Running", "ready": True, "created": True,
        "conditions": [{"type": "Ready", "status": "True"}], "runStrategy": "Always",
        "startFailure": {"consecutiveFailCount": 2},
    }  # fmt: skip
    obj["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 64
    assert SPEC["template"]["spec"]["domain"]["cpu"]["cores"] == 2  # type: ignore[index]


def replace_failures(s: VMState, failures: int) -> VMState:
    return replace(s, failures=failures)


def test_stopped_vm_is_not_created_and_has_no_vmi() -> None:
    status = vm_object(STOPPED)["status"]
    assert (status["printableStatus"], status["ready"], status["created"]) == (
        "Stopped", False, False,
    )  # fmt: skip
    assert status["conditions"] == [{"type": "Ready", "status": "False", "reason": "VMINotExists"}]
    assert vmi_object(STOPPED) is None


def test_vmi_object_carries_template_spec_node_and_migration() -> None:
    migrating = replace(
        RUNNING, status="Migrating", migration=Migration("mig-1", "node-a", "node-b", "Running")
    )
    vmi = vmi_object(migrating)
    assert vmi is not None
    assert (vmi["apiVersion"], vmi["kind"]) == ("kubevirt.io/v1", "VirtualMachineInstance")
    assert vmi["metadata"] == {"name": "web", "namespace": "default", "uid": "uid-1",
                               "labels": {"kubevirt.io/vm": "web"}}  # fmt: skip
    assert vmi["spec"] == {"domain": {"cpu": {"cores": 2}}}
    assert vmi["status"] == {
        "phase": "Running", "nodeName": "node-a",
        "conditions": [{"type": "Ready", "status": "True"}], "interfaces": [],
        "migrationState": {"migrationUid": "mig-1", "sourceNode": "node-a",
                           "targetNode": "node-b", "completed": False, "failed": False},
    }  # fmt: skip


def test_node_object_reports_capacity_cordon_and_hypervisor() -> None:
    obj = node_object(replace(NODE, cordoned=True), vms=3)
    assert (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) == (
        "virtbus.io/v1", "Node", "node-a",
    )  # fmt: skip
    assert obj["spec"]["unschedulable"] is True
    assert obj["status"]["capacity"] == {"cpu": "8", "memory": "16Gi"}
    assert obj["status"]["conditions"][0] == {
        "type": "Ready", "status": "True", "reason": "WorkerReady",
        "message": "worker is posting heartbeats",
    }  # fmt: skip
    assert obj["status"]["nodeInfo"]["hypervisor"] == "qemu"
    assert obj["status"]["nodeInfo"]["kvm"] is True
    assert obj["status"]["vms"] == 3
    lost = node_object(replace(NODE, status="NotReady"), vms=0)
    assert lost["spec"] == {}
    assert lost["status"]["conditions"][0]["status"] == "False"


def test_vm_table_is_kubectls() -> None:
    text = vm_table([RUNNING, STOPPED], now=NOW)
    assert text == (
        "NAME         AGE     STATUS    READY\n"
        "db-primary   3m12s   Stopped   False\n"
        "web          45s     Running   True\n"
    )


def test_all_namespaces_adds_the_namespace_column() -> None:
    lines = vm_table([RUNNING], namespace=None, now=NOW).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "AGE", "STATUS", "READY"]
    assert lines[1].split() == ["default", "web", "45s", "Running", "True"]


def test_vmi_table_lists_only_instances() -> None:
    # The empty IP column is still 6 wide: kubectl's tabwriter has a minimum cell width.
    text = vmi_table([RUNNING, STOPPED], now=NOW)
    assert text == (
        "NAME   AGE         PHASE     IP    NODENAME   READY\n"
        "web    <unknown>   Running         node-a     True\n"
    )
    wide = vmi_table([RUNNING], wide=True, now=NOW).splitlines()[0].split()
    assert wide == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY", "LIVE-MIGRATABLE", "PAUSED"]


def test_node_table_counts_vms_and_shows_cordon() -> None:
    nodes = [replace(NODE, name="node-b", cordoned=True), NODE]
    text = node_table(nodes, {"node-a": 2}, now=NOW)
    assert text == (
        "NAME     STATUS                     AGE   VMS   CPU   MEMORY\n"
        "node-a   Ready                      2d    2     8     16Gi\n"
        "node-b   Ready,SchedulingDisabled   2d    0     8     16Gi\n"
    )
    wide = node_table([NODE], {}, wide=True, now=NOW).splitlines()
    assert wide[0].split()[-3:] == ["HYPERVISOR", "KVM", "LABELS"]
    assert wide[1].split()[-3:] == ["qemu", "true", "gpu=no,zone=a"]


def test_empty_tables_say_no_resources_found() -> None:
    assert vm_table([], now=NOW) == "No resources found in default namespace.\n"
    assert vmi_table([STOPPED], namespace="prod", now=NOW) == (
        "No resources found in prod namespace.\n"
    )
    assert vm_table([], namespace=None) == "No resources found\n"
    assert node_table([], {}) == "No resources found\n"


def test_yaml_and_json_parse_back_to_the_same_list() -> None:
    vmi = vmi_object(RUNNING)
    assert vmi is not None
    doc = as_list([vm_object(RUNNING), vmi, node_object(NODE, vms=1)])
    assert doc["kind"] == "List"
    assert doc["metadata"] == {"resourceVersion": ""}
    as_yaml = to_yaml(doc)
    assert as_yaml.startswith("apiVersion: v1\nkind: List\nitems:\n")  # key order kept
    assert yaml.safe_load(as_yaml) == doc
    as_json = to_json(doc)
    assert as_json.startswith('{\n    "apiVersion": "v1",')  # kubectl indents by 4
    assert json.loads(as_json) == doc
