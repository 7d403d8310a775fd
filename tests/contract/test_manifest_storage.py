"""Storage manifests read purely: claims and DataVolumes as volume commands, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from events import commands as c
from events.errors import ValidationError
from events.manifest import to_commands


def dv(source: dict[str, Any], **spec: Any) -> dict[str, Any]:
    storage = {"resources": {"requests": {"storage": "1Gi"}}}
    spec = {"source": source, "storage": storage, **spec}
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "d"}, "spec": spec}  # fmt: skip


def ref(source_ref: dict[str, Any]) -> dict[str, Any]:
    doc = dv({})
    return {**doc, "spec": {"sourceRef": source_ref, "storage": doc["spec"]["storage"]}}


def test_a_source_ref_is_its_data_source_until_judged_and_a_data_source_fills_its_namespace() -> (
    None
):
    [cmd], _ = to_commands(ref({"kind": "DataSource", "name": "fedora", "namespace": "golden"}))
    assert cmd == c.CreateVolume(name="d", size="1Gi", source="datasource:golden/fedora",
                                 apply=True, data_volume=True)  # fmt: skip
    [cmd], _ = to_commands(ref({"kind": "DataSource", "name": "fedora"}))
    assert isinstance(cmd, c.CreateVolume) and cmd.source == "datasource:default/fedora"
    doc = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
           "metadata": {"name": "fedora", "labels": {"a": "b"}},
           "spec": {"source": {"pvc": {"name": "gold"}}}}  # fmt: skip
    [cmd], _ = to_commands(doc)
    assert cmd == c.ApplyDataSource(name="fedora", namespace="default", labels={"a": "b"},
                                    spec={"source": {"pvc": {"name": "gold",
                                                             "namespace": "default"}}})  # fmt: skip


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ({"http": {"url": "https://x/disk.img"}}, "import:https://x/disk.img"),
        ({"registry": {"url": "docker://quay.io/a/b:1"}}, "registry:quay.io/a/b:1"),
        ({"pvc": {"name": "src", "namespace": "default"}}, "clone:src"),
        ({"pvc": {"name": "src", "namespace": "golden"}}, "clone:golden/src"),
        ({"upload": {}}, "upload"),
        ({"blank": {}}, ""),
    ],
)
def test_each_data_volume_source_is_a_claim_source(source: dict[str, Any], want: str) -> None:
    [cmd], warns = to_commands(dv(source))
    assert cmd == c.CreateVolume(name="d", size="1Gi", source=want, apply=True, data_volume=True)
    assert warns == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (dv({"http": {"url": "x"}, "blank": {}}), "spec.source: needs exactly one of http, "
                                                   "registry, upload, blank, pvc"),
        (dv({"s3": {"url": "s3://b/k"}}), "spec.source.s3: s3 sources are not supported by "
                                          "virtbus; use one of http, registry, upload, blank, pvc"),
        (dv({"http": {"url": "ftp://x"}}), "spec.source.http.url: 'ftp://x' is not an http(s) URL"),
        (dv({"blank": {}}, contentType="archive"), "spec.contentType: archive is not supported"),
        # sourceRef: CDI's webhook's words; the DataSource itself is looked up when judged
        ({**dv({"blank": {}}), "spec": {"sourceRef": {"kind": "DataSource", "name": "d"},
                                        "source": {"blank": {}}}},
         "spec: Data volume should have either Source or SourceRef"),
        (ref({"name": "d"}), "spec.sourceRef.kind: Missing sourceRef kind"),
        (ref({"kind": "DataImportCron", "name": "d"}), "spec.sourceRef.kind: Unsupported sourceRef "
                                                       "kind DataImportCron, currently only "
                                                       "DataSource is supported"),
        (ref({"kind": "DataSource"}), "spec.sourceRef.name: Missing sourceRef name"),
        ({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": "g"},
          "spec": {"source": {"snapshot": {"name": "s", "namespace": "default"}}}},
         "spec.source.snapshot: virtbus has no VolumeSnapshots; give spec.source.pvc"),
        ({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": "g"},
          "spec": {"source": {"pvc": {"namespace": "default"}}}},
         "spec.source.pvc.name: Required value"),
        ({**dv({"blank": {}}), "kind": "DataImportCron"}, "kind: 'DataImportCron' is not "
         "supported in apiVersion cdi.kubevirt.io/v1beta1; virtbus serves DataVolume, "
         "DataSource there"),
        ({"apiVersion": "pool.kubevirt.io/v1alpha1", "kind": "VirtualMachinePool",
          "metadata": {"name": "p"}}, "spec.virtualMachineTemplate: is required"),
        ({"apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
          "metadata": {"name": "p"}}, "spec.virtualMachineTemplate: is required"),
        # Kinds KubeVirt's own examples apply that virtbus does not serve: what to use instead.
        ({"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPlan",
          "metadata": {"name": "p"}},
         "kind: 'MigrationPlan' is not supported in apiVersion migrations.kubevirt.io/v1alpha1; "
         "virtbus serves MigrationPolicy there"),
        ({"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
          "metadata": {"name": "p"}, "spec": {"completionTimeoutPerGiB": -5}},
         "spec.completionTimeoutPerGiB: must not be negative"),
        ({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "p"}},
         "kind: 'PriorityClass' ('scheduling.k8s.io/v1'): virtbus has no pod priorities, so no "
         "PriorityClass; a VM's priorityClassName is ignored with a warning"),
        ({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstancePreset",
          "metadata": {"name": "p"}}, "kind: 'VirtualMachineInstancePreset' ('kubevirt.io/v1'): "
         "KubeVirt deprecated VirtualMachineInstancePresets (kubevirt.io/v1, to be removed in v2) "
         "and virtbus never had them: use instance types and preferences "
         "(instancetype.kubevirt.io/v1beta1)"),
    ],
)  # fmt: skip
def test_what_is_refused_names_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        to_commands(doc)
    assert err.value.message.startswith(message), err.value.message


def test_a_vms_data_volume_templates_come_first_and_are_owned_by_it() -> None:
    template = {"metadata": {"name": "root"}, "spec": dv({"blank": {}})["spec"]}
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm"},
          "spec": {"dataVolumeTemplates": [template], "template": {"spec": {
              "domain": {"devices": {}, "memory": {"guest": "64Mi"}},
              "volumes": [{"name": "root", "dataVolume": {"name": "root"}}]}}}}  # fmt: skip
    (made, applied), _ = to_commands(vm)
    assert made == c.CreateVolume(name="root", size="1Gi", apply=True, data_volume=True, owner="vm")
    assert isinstance(applied, c.ApplyVM) and applied.name == "vm"
