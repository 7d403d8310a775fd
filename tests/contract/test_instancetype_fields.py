"""An instance type's fields besides CPU and memory: applied to the VM as KubeVirt's applier does,
warned about at the instance type's apply as the VM's own field would be, or refused there."""

from __future__ import annotations

from typing import Any

import pytest

from events.errors import ValidationError
from events.instancetypes import InstancetypeState, effective_spec, overcommitted
from events.manifest import to_commands

SIZE = {"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}}


def resolve(itype: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    def lookup(aggregate: str, ns: str, name: str) -> InstancetypeState | None:
        return InstancetypeState(exists=True, spec=itype)

    spec = {"instancetype": {"name": "i", "kind": "virtualmachineclusterinstancetypes"},
            "template": template}  # fmt: skip
    return effective_spec(spec, namespace="ns", lookup=lookup)["template"]


def applied(spec: dict[str, Any]) -> tuple[list[str], str]:
    """The warnings of applying a cluster instance type with `spec`, and its command's type."""
    doc = {"apiVersion": "instancetype.kubevirt.io/v1beta1", "metadata": {"name": "i"},
           "kind": "VirtualMachineClusterInstancetype", "spec": spec}  # fmt: skip
    [cmd], warns = to_commands(doc)
    return warns, type(cmd).__name__


def test_the_fields_virtbus_acts_on_land_on_the_vm_as_kubevirts_applier_puts_them() -> None:
    itype = {
        "cpu": {"guest": 2, "model": "host-passthrough", "maxSockets": 8},
        "memory": {"guest": "1Gi", "maxGuest": "4Gi", "overcommitPercent": 15},
        "annotations": {"team": "infra"},
        "nodeSelector": {"zone": "a"},
    }
    template = {"metadata": {"annotations": {"owner": "me"}},
                "spec": {"domain": {"devices": {}}}}  # fmt: skip
    got = resolve(itype, template)
    assert got == {
        "metadata": {"annotations": {"owner": "me", "team": "infra"}},
        "spec": {
            "nodeSelector": {"zone": "a"},
            "domain": {
                "devices": {},
                "cpu": {"model": "host-passthrough", "maxSockets": 8, "sockets": 2, "cores": 1,
                        "threads": 1},
                "memory": {"guest": "1Gi", "maxGuest": "4Gi"},
                # KubeVirt's float32 arithmetic: 1Gi less 15 %, to the byte
                "resources": {"requests": {"memory": "912680576"}},
            },
        },
    }  # fmt: skip
    assert overcommitted(1 << 30, 15) == 912680576
    assert template == {"metadata": {"annotations": {"owner": "me"}},
                        "spec": {"domain": {"devices": {}}}}  # untouched  # fmt: skip


def test_a_vm_setting_what_the_instance_type_sets_conflicts_in_kubevirts_words() -> None:
    itype = {**SIZE, "cpu": {"guest": 2, "dedicatedCPUPlacement": True, "model": "max"},
             "memory": {"guest": "1Gi", "maxGuest": "2Gi"}, "nodeSelector": {"zone": "a"},
             "ioThreadsPolicy": "auto", "annotations": {"team": "infra"}}  # fmt: skip
    template = {
        "metadata": {"annotations": {"team": "other"}},
        "spec": {"nodeSelector": {"zone": "b"},
                 "domain": {"cpu": {"model": "Haswell", "dedicatedCpuPlacement": True},
                            "memory": {"maxGuest": "8Gi"}, "ioThreadsPolicy": "shared"}},
    }  # fmt: skip
    with pytest.raises(ValidationError) as err:
        resolve(itype, template)
    assert (err.value.field, err.value.message) == ("spec.instancetype", (
        "VM field(s) spec.template.spec.nodeSelector, spec.template.spec.domain.cpu.model, "
        "spec.template.spec.domain.cpu.dedicatedCPUPlacement, "
        "spec.template.spec.domain.memory.maxGuest, spec.template.spec.domain.ioThreadsPolicy, "
        "annotations.team conflicts with selected instance type"))  # fmt: skip


def test_the_fields_virtbus_does_not_do_are_warned_about_at_the_instance_types_apply() -> None:
    warns, kind = applied({
        "cpu": {"guest": 2, "dedicatedCPUPlacement": True, "numa": {"guestMappingPassthrough": {}}},
        "memory": {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}},
        "schedulerName": "my-scheduler", "ioThreadsPolicy": "auto",
    })  # fmt: skip
    assert kind == "ApplyClusterInstancetype"
    assert warns == [
        "warning: spec.schedulerName: virtbus has one scheduler; ignored",
        "warning: spec.ioThreadsPolicy: virtbus's domains have no IO threads: QEMU's main loop "
        "serves the disks",
        "warning: spec.cpu.dedicatedCPUPlacement: virtbus pins no CPUs; the vCPUs float",
        "warning: spec.cpu.numa: virtbus maps no NUMA topology",
        "warning: spec.memory.hugepages: virtbus backs guest memory with ordinary pages",
    ]
    # the warned fields still land on the VM, where the node ignores them as a VM's own
    got = resolve({"cpu": {"guest": 1, "isolateEmulatorThread": True}, "memory": {"guest": "1Gi"},
                   "schedulerName": "s"}, {"spec": {"domain": {}}})  # fmt: skip
    assert got == {"spec": {"schedulerName": "s", "domain": {
        "cpu": {"isolateEmulatorThread": True, "sockets": 1, "cores": 1, "threads": 1},
        "memory": {"guest": "1Gi"}}}}  # fmt: skip


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({**SIZE, "gpus": [{"name": "g", "deviceName": "nvidia.com/T4"}]}, "spec.gpus",
     "virtbus passes no GPUs through (its nodes have no device plugins); the VMI would run "
     "without the GPU"),
    ({**SIZE, "hostDevices": [{"name": "h", "deviceName": "intel.com/qat"}]}, "spec.hostDevices",
     "virtbus passes no host devices through (PCI or mediated)"),
    ({**SIZE, "launchSecurity": {"sev": {}}}, "spec.launchSecurity",
     "virtbus runs no confidential guests (SEV, TDX, secure execution)"),
])  # fmt: skip
def test_the_fields_virtbus_refuses_in_a_vm_are_refused_in_an_instance_type(
    spec: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        applied(spec)
    assert (err.value.field, err.value.message) == (
        field,
        f"{field}: {message}; remove it to run the VM on virtbus",
    )
    # One stored before virtbus refused it is refused at the VM's start, as the VM's own field.
    with pytest.raises(ValidationError) as err:
        resolve(spec, {"spec": {"domain": {}}})
    vmi_path = {"spec.gpus": "domain.devices.gpus",
                "spec.hostDevices": "domain.devices.hostDevices",
                "spec.launchSecurity": "domain.launchSecurity"}[field]  # fmt: skip
    assert err.value.field == f"spec.template.spec.{vmi_path}"


def test_an_instance_types_values_are_checked_naming_the_field() -> None:
    for spec, field, message in (
        ({"cpu": {"guest": 4, "maxSockets": 2}, "memory": {"guest": "1Gi"}}, "spec.cpu.maxSockets",
         "2 must be an integer, 4 to 4096"),
        ({**SIZE, "memory": {"guest": "1Gi", "overcommitPercent": 101}},
         "spec.memory.overcommitPercent", "101 must be an integer, 0 to 100"),
        ({**SIZE, "memory": {"guest": "2Gi", "maxGuest": "1Gi"}}, "spec.memory.maxGuest",
         "must be at least spec.memory.guest"),
        ({**SIZE, "ioThreadsPolicy": "many"}, "spec.ioThreadsPolicy",
         "'many' is not one of shared, auto, supplementalPool"),
    ):  # fmt: skip
        with pytest.raises(ValidationError) as err:
            applied(spec)
        assert (err.value.field, err.value.message) == (field, f"{field}: {message}")
