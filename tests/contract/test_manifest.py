"""KubeVirt manifests in, virtbus commands out: what is accepted, rejected and warned about."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from paths import SEED

from events.commands import ApplyReplicaSet, ApplyVM, MigrateVM
from events.errors import ValidationError
from events.manifest import (
    parse_documents,
    parse_quantity,
    run_strategy_of,
    summarize,
    to_commands,
)

TSPEC = "spec.template.spec"
DISKS = f"{TSPEC}.domain.devices.disks"


def seed() -> dict[str, Any]:
    [doc] = parse_documents(SEED.read_text())
    return doc


def vmi_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def rejected(doc: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        to_commands(doc)
    err = info.value
    assert err.message.startswith(f"{err.field}: "), err.message
    return err


# --- the seed manifest ---------------------------------------------------------------------------


def test_seed_manifest_is_accepted_unchanged_without_warnings() -> None:
    doc = seed()
    original = copy.deepcopy(doc)
    commands, warnings = to_commands(doc)
    assert warnings == []
    [cmd] = commands
    assert isinstance(cmd, ApplyVM)
    assert (cmd.name, cmd.namespace, cmd.source_kind) == ("centos7", "default", "VirtualMachine")
    assert cmd.spec == original["spec"]
    assert cmd.spec is not doc["spec"]
    assert doc == original
    assert run_strategy_of(cmd.spec) == "Halted"


def test_seed_command_survives_the_wire() -> None:
    [cmd], _ = to_commands(seed(), default_namespace="lab")
    assert cmd.namespace == "lab"
    decoded = msgspec.json.decode(msgspec.json.encode(cmd), type=ApplyVM)
    assert decoded == cmd


def test_summarize_seed_for_the_scheduler() -> None:
    [cmd], _ = to_commands(seed())
    assert isinstance(cmd, ApplyVM)
    assert summarize(cmd.spec) == {"memory_bytes": 2 * 10**9, "cpus": 1, "node_selector": {}}


def test_summarize_counts_topology_and_prefers_requests() -> None:
    spec = {
        "domain": {
            "cpu": {"cores": 2, "sockets": 2, "threads": 2},
            "memory": {"guest": "4Gi"},
            "resources": {"requests": {"memory": "1Gi"}},
        },
        "nodeSelector": {"zone": "a"},
    }
    summary = summarize(spec)
    assert summary == {"memory_bytes": 2**30, "cpus": 8, "node_selector": {"zone": "a"}}
    del spec["domain"]["resources"]  # type: ignore[attr-defined]
    assert summarize({"template": {"spec": spec}})["memory_bytes"] == 4 * 2**30


# --- run strategy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"running": True}, "Always"),
        ({"running": False}, "Halted"),
        ({}, "Halted"),
        ({"runStrategy": "RerunOnFailure"}, "RerunOnFailure"),
        ({"runStrategy": "Manual"}, "Manual"),
    ],
)
def test_run_strategy_of(spec: dict[str, Any], expected: str) -> None:
    assert run_strategy_of(spec) == expected


@pytest.mark.parametrize("strategy", ["Always", "RerunOnFailure", "Manual", "Halted", "Once"])
def test_every_run_strategy_is_accepted(strategy: str) -> None:
    doc = seed()
    del doc["spec"]["running"]
    doc["spec"]["runStrategy"] = strategy
    [cmd], warnings = to_commands(doc)
    assert isinstance(cmd, ApplyVM)
    assert run_strategy_of(cmd.spec) == strategy
    assert warnings == []


def test_running_and_run_strategy_together_are_rejected() -> None:
    doc = seed()
    doc["spec"]["runStrategy"] = "Always"
    err = rejected(doc)
    assert err.field == "spec.running"
    assert "mutually exclusive" in err.message


def test_unknown_run_strategy_lists_the_allowed_values() -> None:
    doc = seed()
    del doc["spec"]["running"]
    doc["spec"]["runStrategy"] = "Sometimes"
    err = rejected(doc)
    assert err.field == "spec.runStrategy"
    assert "'Sometimes'" in err.message
    assert "Always, RerunOnFailure, Manual, Halted, Once" in err.message


def test_running_must_be_a_bool() -> None:
    doc = seed()
    doc["spec"]["running"] = "yes please"
    assert rejected(doc).field == "spec.running"


# --- the other kinds -----------------------------------------------------------------------------


def test_vmi_becomes_a_run_once_vm_spec() -> None:
    template = seed()["spec"]["template"]
    doc = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "once", "namespace": "lab", "labels": {"app": "x"}},
        "spec": template["spec"],
    }
    [cmd], warnings = to_commands(doc)
    assert warnings == []
    assert isinstance(cmd, ApplyVM)
    assert (cmd.name, cmd.namespace, cmd.source_kind) == ("once", "lab", "VirtualMachineInstance")
    assert cmd.labels == {"app": "x"}
    assert cmd.spec == {
        "runStrategy": "Once",
        "template": {"metadata": {"labels": {"app": "x"}}, "spec": template["spec"]},
    }
    assert summarize(cmd.spec)["memory_bytes"] == 2 * 10**9


def test_vmi_errors_name_the_vmi_path() -> None:
    spec = vmi_spec(seed())
    spec["domain"]["devices"]["disks"][0]["name"] = "nope"
    doc = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance"}
    err = rejected({**doc, "metadata": {"name": "x"}, "spec": spec})
    assert err.field == "spec.domain.devices.disks[0].name"


def replica_set(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceReplicaSet",
        "metadata": {"name": "pool", "labels": {"tier": "web"}},
        "spec": {"template": seed()["spec"]["template"], **spec},
    }


def test_replica_set_defaults_to_one_replica() -> None:
    [cmd], warnings = to_commands(replica_set(selector={"matchLabels": {"a": "b"}}))
    assert warnings == []
    assert isinstance(cmd, ApplyReplicaSet)
    assert (cmd.name, cmd.labels, cmd.target.kind) == ("pool", {"tier": "web"}, "rs")
    assert cmd.spec["replicas"] == 1
    assert cmd.spec["selector"] == {"matchLabels": {"a": "b"}}


def test_replica_set_keeps_zero_replicas() -> None:
    [cmd], _ = to_commands(replica_set(replicas=0))
    assert isinstance(cmd, ApplyReplicaSet)
    assert cmd.spec["replicas"] == 0


@pytest.mark.parametrize("replicas", [-1, "3", 2.5, True, 10_001])
def test_replica_set_rejects_bad_replicas(replicas: Any) -> None:
    err = rejected(replica_set(replicas=replicas))
    assert err.field == "spec.replicas"
    assert "integer" in err.message


def test_replica_set_requires_a_template() -> None:
    doc = replica_set(replicas=2)
    del doc["spec"]["template"]
    err = rejected(doc)
    assert err.field == "spec.template"
    assert "required" in err.message


def test_migration_targets_the_vmi() -> None:
    doc = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "move-it", "namespace": "lab"},
        "spec": {"vmiName": "centos7"},
    }
    [cmd], warnings = to_commands(doc)
    assert warnings == []
    assert cmd == MigrateVM(name="centos7", namespace="lab", migration="move-it", vmim=True)


def test_migration_requires_vmi_name() -> None:
    doc = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "move-it"},
        "spec": {},
    }
    err = rejected(doc)
    assert err.field == "spec.vmiName"
    assert "required" in err.message


def test_v1alpha3_is_accepted_with_a_deprecation_warning() -> None:
    doc = seed()
    doc["apiVersion"] = "kubevirt.io/v1alpha3"
    [cmd], warnings = to_commands(doc)
    assert isinstance(cmd, ApplyVM)
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: apiVersion:")
    assert "deprecated" in warnings[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [("apiVersion", "apps/v1"), ("apiVersion", None), ("kind", "Deployment"), ("kind", None)],
)
def test_unknown_api_version_or_kind(key: str, value: Any) -> None:
    doc = seed()
    doc[key] = value
    err = rejected(doc)
    assert err.field == key
    assert "not supported" in err.message


# --- metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", None, "required"),
        ("name", "CentOS_7", "DNS-1123"),
        ("name", "a" * 64, "at most 63"),
        ("namespace", "Prod", "DNS-1123"),
    ],
)
def test_metadata_names_are_dns_labels(field: str, value: Any, reason: str) -> None:
    doc = seed()
    doc["metadata"][field] = value
    err = rejected(doc)
    assert err.field == f"metadata.{field}"
    assert reason in err.message


def test_labels_and_annotations_are_carried_and_must_be_strings() -> None:
    doc = seed()
    doc["metadata"]["labels"] = {"app": "db"}
    doc["metadata"]["annotations"] = {"note": "hi"}
    [cmd], _ = to_commands(doc)
    assert isinstance(cmd, ApplyVM)
    assert (cmd.labels, cmd.annotations) == ({"app": "db"}, {"note": "hi"})
    doc["metadata"]["labels"] = {"version": 7}
    err = rejected(doc)
    assert err.field == "metadata.labels.version"
    assert "string" in err.message


# --- template validation -------------------------------------------------------------------------


def test_domain_is_required() -> None:
    doc = seed()
    del vmi_spec(doc)["domain"]
    err = rejected(doc)
    assert err.field == f"{TSPEC}.domain"
    assert "required" in err.message


def test_template_is_required() -> None:
    doc = seed()
    del doc["spec"]["template"]
    assert rejected(doc).field == "spec.template"


def test_disk_must_reference_a_volume() -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["devices"]["disks"][1]["name"] = "missing"
    err = rejected(doc)
    assert err.field == f"{DISKS}[1].name"
    assert "no volume named 'missing'" in err.message


def test_volume_names_are_unique() -> None:
    doc = seed()
    vmi_spec(doc)["volumes"][2]["name"] = "harddrive"
    err = rejected(doc)
    assert err.field == f"{TSPEC}.volumes[2].name"
    assert "used twice" in err.message


def test_volume_with_two_sources_is_rejected() -> None:
    doc = seed()
    vmi_spec(doc)["volumes"][0]["emptyDisk"] = {"capacity": "1Gi"}
    err = rejected(doc)
    assert err.field == f"{TSPEC}.volumes[0]"
    assert "persistentVolumeClaim, emptyDisk" in err.message


def test_volume_without_source_is_rejected() -> None:
    doc = seed()
    vmi_spec(doc)["volumes"][0] = {"name": "cdromiso"}
    err = rejected(doc)
    assert err.field == f"{TSPEC}.volumes[0]"
    assert "containerDisk" in err.message


def test_unknown_volume_source_only_warns() -> None:
    doc = seed()
    vmi_spec(doc)["volumes"][2] = {"name": "virtiocontainerdisk", "magicDisk": {}}
    _, warnings = to_commands(doc)
    assert warnings == [f"warning: {TSPEC}.volumes[2].magicDisk: unknown field, ignored by virtbus"]


def test_disk_is_at_most_one_of_disk_cdrom_lun() -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["devices"]["disks"][1]["lun"] = {}
    err = rejected(doc)
    assert err.field == f"{DISKS}[1]"
    assert "disk and lun" in err.message


@pytest.mark.parametrize(("index", "kind", "bus"), [(1, "disk", "ide"), (0, "cdrom", "virtio")])
def test_disk_bus_is_checked(index: int, kind: str, bus: str) -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["devices"]["disks"][index][kind]["bus"] = bus
    err = rejected(doc)
    assert err.field == f"{DISKS}[{index}].{kind}.bus"
    assert repr(bus) in err.message or "virtio bus" in err.message


def test_disk_without_type_defaults_to_disk() -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["devices"]["disks"][1] = {"name": "harddrive"}
    [cmd], warnings = to_commands(doc)
    assert isinstance(cmd, ApplyVM)
    assert warnings == []


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"type": "Partition"}, "type", "Disk, DiskOrCreate"),
        ({"capacity": None}, "capacity", "required when type is DiskOrCreate"),
        ({"capacity": "lots"}, "capacity", "not a quantity"),
        ({"path": ""}, "path", "required"),
    ],
)
def test_host_disk_is_checked(change: dict[str, Any], field: str, reason: str) -> None:
    doc = seed()
    vmi_spec(doc)["volumes"][1]["hostDisk"].update(change)
    err = rejected(doc)
    assert err.field == f"{TSPEC}.volumes[1].hostDisk.{field}"
    assert reason in err.message


def test_host_disk_of_type_disk_needs_no_capacity() -> None:
    doc = seed()
    vmi_spec(doc)["volumes"][1]["hostDisk"] = {"path": "/data/disk.img", "type": "Disk"}
    [cmd], _ = to_commands(doc)
    assert isinstance(cmd, ApplyVM)


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True])
def test_cpu_topology_must_be_positive_ints(value: Any) -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["cpu"]["sockets"] = value
    err = rejected(doc)
    assert err.field == f"{TSPEC}.domain.cpu.sockets"
    assert "positive integer" in err.message


def test_memory_must_be_a_quantity() -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["resources"]["requests"]["memory"] = "two gigs"
    err = rejected(doc)
    assert err.field == f"{TSPEC}.domain.resources.requests.memory"
    assert "'two gigs' is not a quantity" in err.message


def test_memory_is_required_unless_an_instancetype_sizes_the_vm() -> None:
    doc = seed()
    del vmi_spec(doc)["domain"]["resources"]
    err = rejected(doc)
    assert err.field == f"{TSPEC}.domain.resources.requests.memory"
    vmi_spec(doc)["domain"]["memory"] = {"guest": "1Gi"}
    assert to_commands(doc)[1] == []
    del vmi_spec(doc)["domain"]["memory"]
    doc["spec"]["instancetype"] = {"name": "u1.medium"}
    assert to_commands(doc)[1] == []


def test_interface_must_reference_a_network() -> None:
    doc = seed()
    vmi_spec(doc)["networks"][0]["name"] = "other"
    err = rejected(doc)
    assert err.field == f"{TSPEC}.domain.devices.interfaces[0].name"
    assert "no network named 'default'" in err.message


def test_network_needs_exactly_one_source() -> None:
    doc = seed()
    vmi_spec(doc)["networks"][0]["multus"] = {"networkName": "br"}
    err = rejected(doc)
    assert err.field == f"{TSPEC}.networks[0]"
    assert "pod or multus" in err.message


def test_interface_has_at_most_one_binding() -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["devices"]["interfaces"][0]["bridge"] = {}
    err = rejected(doc)
    assert err.field == f"{TSPEC}.domain.devices.interfaces[0]"
    assert "binding" in err.message


def test_unknown_nic_model_only_warns() -> None:
    doc = seed()
    vmi_spec(doc)["domain"]["devices"]["interfaces"][0]["model"] = "vmxnet3"
    [cmd], warnings = to_commands(doc)
    assert isinstance(cmd, ApplyVM)
    assert warnings == [
        f"warning: {TSPEC}.domain.devices.interfaces[0].model: unknown NIC model 'vmxnet3'"
    ]


def test_wrong_shapes_are_rejected_with_the_path() -> None:
    doc = seed()
    vmi_spec(doc)["volumes"] = {"name": "x"}
    err = rejected(doc)
    assert err.field == f"{TSPEC}.volumes"
    assert "expected a list" in err.message


# --- unknown and known-but-ignored fields --------------------------------------------------------


def test_unknown_fields_warn_with_their_path() -> None:
    doc = seed()
    doc["extra"] = 1
    doc["spec"]["colour"] = "blue"
    vmi_spec(doc)["domain"]["foo"] = {}
    vmi_spec(doc)["domain"]["devices"]["disks"][1]["disk"]["speed"] = "fast"
    [cmd], warnings = to_commands(doc)
    assert isinstance(cmd, ApplyVM)
    assert cmd.spec["template"]["spec"]["domain"]["foo"] == {}
    assert sorted(warnings) == sorted(
        [
            "warning: extra: unknown field, ignored by virtbus",
            "warning: spec.colour: unknown field, ignored by virtbus",
            f"warning: {TSPEC}.domain.foo: unknown field, ignored by virtbus",
            f"warning: {DISKS}[1].disk.speed: unknown field, ignored by virtbus",
        ]
    )


def test_known_kubevirt_fields_do_not_warn() -> None:
    doc = seed()
    doc["status"] = {"ready": False}
    doc["spec"]["dataVolumeTemplates"] = []
    doc["spec"]["preference"] = {"name": "centos"}
    spec = vmi_spec(doc)
    spec.update(
        evictionStrategy="LiveMigrate",
        nodeSelector={"kubernetes.io/hostname": "n1"},
        tolerations=[],
        terminationGracePeriodSeconds=0,
        hostname="c7",
        subdomain="lab",
        accessCredentials=[],
    )
    spec["domain"].update(firmware={"bootloader": {"bios": {}}}, clock={}, features={})
    spec["domain"]["devices"].update(
        gpus=[],
        hostDevices=[],
        inputs=[],
        rng={},
        autoattachGraphicsDevice=False,
        autoattachSerialConsole=True,
        networkInterfaceMultiqueue=True,
    )
    spec["domain"]["cpu"].update(sockets=2, threads=2, model="host-passthrough")
    [cmd], warnings = to_commands(doc)
    assert warnings == []
    assert isinstance(cmd, ApplyVM)
    assert summarize(cmd.spec)["cpus"] == 4
    assert summarize(cmd.spec)["node_selector"] == {"kubernetes.io/hostname": "n1"}


# --- quantities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * 10**9),
        ("2Gi", 2 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1024", 1024),
        ("1.5Gi", 3 * 2**29),
        ("100M", 100 * 10**6),
        ("1e3", 1000),
        ("64k", 64_000),
        ("1Ti", 2**40),
        (".5Ki", 512),
        ("1500m", 2),
        (" 8Mi ", 8 * 2**20),
    ],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


def test_parse_quantity_accepts_yaml_ints() -> None:
    assert parse_quantity(4096) == 4096  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "G", "2 G", "2GB", "2g", "1.2.3", "abc", "0x10", "-1Gi"])
def test_parse_quantity_rejects_garbage(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_quantity(text, field="spec.x.memory")
    assert info.value.field == "spec.x.memory"
    assert info.value.message.startswith(f"spec.x.memory: {text!r}")


# --- documents -----------------------------------------------------------------------------------


def test_multi_document_yaml_skips_empty_documents() -> None:
    text = SEED.read_text()
    migration = "kind: VirtualMachineInstanceMigration\nmetadata: {name: m}\n"
    docs = parse_documents(f"---\n{text}\n---\n---\n# only a comment\n---\n{migration}...\n")
    assert [doc["kind"] for doc in docs] == ["VirtualMachine", "VirtualMachineInstanceMigration"]
    assert docs[0] == seed()


def test_top_level_list_and_kind_list_are_flattened() -> None:
    items = "- {kind: A}\n- {kind: B}\n"
    listed = "kind: List\nitems:\n- {kind: C}\n"
    docs = parse_documents(f"{items}---\n{listed}")
    assert [doc["kind"] for doc in docs] == ["A", "B", "C"]


def test_empty_text_has_no_documents() -> None:
    assert parse_documents("") == []
    assert parse_documents("---\n---\n") == []


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ValidationError) as info:
        parse_documents("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\n  bad: [indent\n")
    assert info.value.field == "yaml"
    assert "line 3" in info.value.message


def test_non_mapping_document_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        parse_documents("kind: VirtualMachine\n---\njust a string\n")
    assert info.value.field == "documents[1]"
    assert "expected a mapping, got str" in info.value.message
    with pytest.raises(ValidationError) as info:
        parse_documents("- {kind: A}\n- 3\n")
    assert info.value.field == "documents[0][1]"


def test_unknown_kind_is_reported_before_metadata() -> None:
    err = rejected({"apiVersion": "kubevirt.io/v1", "kind": "Pod", "metadata": {"name": "BAD"}})
    assert err.field == "kind"
    assert "VirtualMachineInstanceMigration" in err.message


def test_document_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as info:
        to_commands(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert info.value.field == "document"


# --- recognised, not implemented: said, not swallowed ---------------------------------------------


def test_fields_virtbus_does_not_do_are_warned_about_naming_the_path() -> None:
    doc = seed()
    spec = vmi_spec(doc)
    spec.update(affinity={}, readinessProbe={"tcpSocket": {"port": 22}}, priorityClassName="hi",
                architecture="amd64")  # fmt: skip
    spec["domain"]["cpu"]["dedicatedCpuPlacement"] = True
    spec["domain"]["devices"]["tpm"] = {}
    _, warnings = to_commands(doc)
    assert warnings == [
        f"warning: {TSPEC}.domain.devices.tpm: virtbus gives the guest no TPM",
        f"warning: {TSPEC}.domain.cpu.dedicatedCpuPlacement: virtbus pins no CPUs; the vCPUs float",
        f"warning: {TSPEC}.priorityClassName: virtbus has no pod priorities; ignored",
        f"warning: {TSPEC}.affinity: virtbus's scheduler does not read affinity; use nodeSelector",
        f"warning: {TSPEC}.readinessProbe: virtbus runs no probes; the VMI is ready once it runs",
    ]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda s: s["domain"]["devices"].update(gpus=[{"name": "g", "deviceName": "nvidia/x"}]),
         "domain.devices.gpus", "virtbus passes no GPUs through"),
        (lambda s: s["domain"]["devices"].update(hostDevices=[{"name": "h", "deviceName": "x"}]),
         "domain.devices.hostDevices", "virtbus passes no host devices through"),
        (lambda s: s.update(resourceClaims=[{"name": "c"}]), "resourceClaims",
         "virtbus allocates no DRA resource claims"),
        (lambda s: s["networks"].__setitem__(0, {"name": "default",
                                                  "multus": {"networkName": "b"}}),
         "networks[0].multus", "virtbus attaches no multus networks"),
        (lambda s: s["domain"]["devices"]["interfaces"].__setitem__(0, {"name": "default",
                                                                         "sriov": {}}),
         "domain.devices.interfaces[0].sriov", "virtbus does no SR-IOV"),
        (lambda s: s["domain"].update(firmware={"kernelBoot": {"container": {"image": "k"}}}),
         "domain.firmware.kernelBoot", "virtbus does not boot a kernel"),
        (lambda s: s["domain"].update(firmware={"bootloader": {"efi": {"secureBoot": True}}}),
         "domain.firmware.bootloader.efi", "virtbus boots guests with BIOS (SeaBIOS) only"),
        (lambda s: s.update(architecture="arm64"), "architecture",
         "virtbus runs amd64 guests only"),
        (lambda s: s["domain"].update(launchSecurity={"sev": {}}), "domain.launchSecurity",
         "virtbus runs no confidential guests"),
    ],
)  # fmt: skip
def test_fields_that_would_mislead_are_refused_naming_the_path(
    change: Any, field: str, reason: str
) -> None:
    doc = seed()
    change(vmi_spec(doc))
    err = rejected(doc)
    assert err.field == f"{TSPEC}.{field}"
    assert err.message.startswith(f"{TSPEC}.{field}: {reason}"), err.message
    assert err.message.endswith("; remove it to run the VM on virtbus")


def test_a_sidecar_hook_is_refused_naming_the_annotation() -> None:
    doc = seed()
    doc["spec"]["template"].setdefault("metadata", {})["annotations"] = {
        "hooks.kubevirt.io/hookSidecars": '[{"image": "x"}]'}  # fmt: skip
    err = rejected(doc)
    assert err.field == "spec.template.metadata.annotations.hooks.kubevirt.io/hookSidecars"
    assert err.message == (
        f"{err.field}: virtbus runs no sidecar hooks; remove it to run the VM on virtbus"
    )
