"""KubeVirt's preference applier, topology layout and requirements, as pure functions over specs."""

from __future__ import annotations

from typing import Any

import pytest

from events import model as m
from events.errors import ValidationError
from events.instancetypes import InstancetypeState, effective_spec
from events.kubevirt import config_of, read_spec
from events.preferences import layout
from events.state import VMState
from events.vmstate import Revision
from orchestrator.instancetypes import admit, captures, effective, expansion


def resolve(vm: dict[str, Any], itype: dict[str, Any] | None,
            pref: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    known = {"clusterinstancetype": itype, "clusterpreference": pref}

    def lookup(aggregate: str, ns: str, name: str) -> InstancetypeState | None:
        spec = known.get(aggregate)
        return None if spec is None else InstancetypeState(exists=True, spec=spec)

    spec = {**({"instancetype": {"name": "i"}} if itype else {}),
            **({"preference": {"name": "p"}} if pref else {}), "template": vm}  # fmt: skip
    return effective_spec(spec, namespace="ns", lookup=lookup)["template"]


def refusal(vm: dict[str, Any], itype: dict[str, Any] | None, pref: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        resolve(vm, itype, pref)
    return f"{err.value.field}: {err.value.message}"


def test_the_preferred_topology_lays_out_the_instance_types_vcpus() -> None:
    def cpu(topology: str, **more: Any) -> dict[str, Any]:
        return {"cpu": {"preferredCPUTopology": topology, **more}}

    assert layout(1, cpu("cores")) == {"sockets": 1, "cores": 1, "threads": 1}
    assert layout(4, {}) == {"sockets": 4, "cores": 1, "threads": 1}
    assert layout(4, cpu("preferThreads")) == {"sockets": 1, "cores": 1, "threads": 4}
    assert layout(4, cpu("any")) == {"sockets": 4, "cores": 1, "threads": 1}
    assert layout(8, cpu("spread")) == {"sockets": 4, "cores": 2, "threads": 1}
    assert layout(8, cpu("spread", spreadOptions={"across": "CoresThreads"})) == {
        "sockets": 1, "cores": 4, "threads": 2}  # fmt: skip
    assert layout(12, cpu("spread", spreadOptions={"across": "SocketsCoresThreads",
                                                   "ratio": 3})) == {
        "sockets": 2, "cores": 3, "threads": 2}  # fmt: skip
    itype = {"cpu": {"guest": 3}, "memory": {"guest": "1Gi"}}
    assert refusal({}, itype, cpu("spread")) == (
        "instancetype.spec.cpu.guest: 3 vCPUs provided by the instance type are not divisible "
        "by the Spec.PreferSpreadSocketToCoreRatio or Spec.CPU.PreferSpreadOptions.Ratio of 2 "
        "provided by the preference")  # fmt: skip


def test_every_preferred_field_fills_what_the_vm_leaves_unset() -> None:
    pref = {
        "cpu": {"preferredCPUFeatures": [{"name": "vmx", "policy": "require"}, {"name": "pcid"}]},
        "devices": {
            "preferredDiskBus": "sata",
            "preferredDiskCache": "none",
            "preferredDiskIO": "native",
            "preferredCdromBus": "sata",
            "preferredInterfaceModel": "e1000",
            "preferredInterfaceMasquerade": {},
            "preferredAutoattachGraphicsDevice": False,
            "preferredAutoattachSerialConsole": False,
            "preferredRng": {},
            "preferredDisableHotplug": True,
            "preferredVideoType": "vga",
            "preferredInputBus": "usb",
            "preferredInputType": "tablet",
            "preferredPanicDeviceModel": "isa",
        },
        "features": {
            "preferredAcpi": {},
            "preferredSmm": {"enabled": True},
            "preferredHyperv": {"relaxed": {}, "vapic": {}},
        },
        "firmware": {"preferredUseBios": True, "preferredUseBiosSerial": True},
        "machine": {"preferredMachineType": "q35"},
        "clock": {"preferredClockOffset": {"utc": {}}, "preferredTimer": {"rtc": {}}},
        "preferredSubdomain": "sub",
        "preferredTerminationGracePeriodSeconds": 30,
        "annotations": {"a": "pref", "b": "pref"},
    }
    vm = {"metadata": {"annotations": {"a": "mine"}}, "spec": {
        "networks": [{"name": "n", "pod": {}}, {"name": "m", "pod": {}}],
        "terminationGracePeriodSeconds": 5,
        "domain": {"cpu": {"features": [{"name": "vmx", "policy": "disable"}]},
                   "clock": {"timezone": "Europe/Paris"},
                   "devices": {"disks": [{"name": "a"}, {"name": "c", "cdrom": {"bus": "scsi"}}],
                               "interfaces": [{"name": "n"}, {"name": "m", "bridge": {}}],
                               "inputs": [{"name": "t", "type": "keyboard"}],
                               "autoattachSerialConsole": True}}}}  # fmt: skip
    got = resolve(vm, None, pref)
    domain = got["spec"]["domain"]
    assert got["metadata"] == {"annotations": {"a": "mine", "b": "pref"}}
    assert (got["spec"]["subdomain"], got["spec"]["terminationGracePeriodSeconds"]) == ("sub", 5)
    assert domain["cpu"] == {"features": [{"name": "vmx", "policy": "disable"}, {"name": "pcid"}]}
    assert domain["devices"] == {
        "disks": [{"name": "a", "disk": {"bus": "sata"}, "cache": "none", "io": "native"},
                  {"name": "c", "cdrom": {"bus": "scsi"}}],
        "interfaces": [{"name": "n", "model": "e1000", "masquerade": {}},
                       {"name": "m", "bridge": {}, "model": "e1000"}],
        "inputs": [{"name": "t", "type": "keyboard", "bus": "usb"}],
        "autoattachSerialConsole": True, "autoattachGraphicsDevice": False, "rng": {},
        "disableHotplug": True, "video": {"type": "vga"}, "panicDevices": [{"model": "isa"}],
    }  # fmt: skip
    assert domain["features"] == {"acpi": {}, "smm": {"enabled": True},
                                  "hyperv": {"relaxed": {}, "vapic": {}}}  # fmt: skip
    assert domain["firmware"] == {"bootloader": {"bios": {"useSerial": True}}}
    assert (domain["machine"], domain["clock"]) == (
        {"type": "q35"}, {"timezone": "Europe/Paris", "timer": {"rtc": {}}})  # fmt: skip
    assert vm["spec"]["domain"]["devices"]["disks"][0] == {"name": "a"}  # the VM's own: a copy
    # What virtbus refuses in a VM is refused when a preference brings it.
    efi = "spec.template.spec.domain.firmware.bootloader.efi"
    assert refusal({}, None, {"firmware": {"preferredEfi": {}}}) == (
        f"{efi}: {efi}: virtbus boots guests with BIOS (SeaBIOS) only: no EFI, no secure boot; "
        "remove it to run the VM on virtbus")  # fmt: skip


def test_an_empty_machine_type_takes_the_preferred_one() -> None:
    """KubeVirt fills `machine.type` when it is "" (its user guide's vm.yaml) as when unset; a
    type of the VM's own stays."""
    pref = {"machine": {"preferredMachineType": "pc-q35-8.0"}}
    empty = {"spec": {"domain": {"machine": {"type": ""}}}}
    assert resolve(empty, None, pref)["spec"]["domain"]["machine"] == {"type": "pc-q35-8.0"}
    own = {"spec": {"domain": {"machine": {"type": "q35"}}}}
    assert resolve(own, None, pref)["spec"]["domain"]["machine"] == {"type": "q35"}


def test_a_vm_below_its_preferences_requirements_is_refused_with_kubevirts_words() -> None:
    needs = {"requirements": {"cpu": {"guest": 2}, "memory": {"guest": "2Gi"}}}
    small = {"cpu": {"guest": 1}, "memory": {"guest": "4Gi"}}
    assert refusal({}, small, needs) == (
        "spec.instancetype: failure checking preference requirements: insufficient CPU "
        "resources of 1 vCPU provided by instance type, preference requires 2 vCPU")  # fmt: skip
    assert refusal({}, {"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}}, needs) == (
        "spec.instancetype: failure checking preference requirements: insufficient Memory "
        "resources of 1Gi provided by instance type, preference requires 2Gi")  # fmt: skip
    own = {"spec": {"domain": {"cpu": {"cores": 4}, "memory": {"guest": "4Gi"}}}}
    assert refusal(own, None, needs) == (
        "spec.template.spec.domain.cpu.sockets: failure checking preference requirements: "
        "insufficient CPU resources of 0 vCPU provided by VirtualMachine, preference requires "
        "2 vCPU provided as sockets")  # fmt: skip
    assert refusal({"spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}, None,
                   {"requirements": {"memory": {"guest": "2Gi"}}}) == (
        "spec.template.spec.domain.memory: failure checking preference requirements: "
        "insufficient Memory resources of 1Gi provided by VirtualMachine, preference requires "
        "2Gi")  # fmt: skip
    assert refusal({}, None, needs).endswith("no CPU resources provided by VirtualMachine, "
                                             "preference requires 2 vCPU")  # fmt: skip
    cores = {**needs, "cpu": {"preferredCPUTopology": "cores"}}
    assert resolve(own, None, cores)["spec"]["domain"]["cpu"] == {"cores": 4}
    assert resolve({}, {"cpu": {"guest": 2}, "memory": {"guest": "2Gi"}}, needs)["spec"][
        "domain"]["cpu"] == {"sockets": 2, "cores": 1, "threads": 1}  # fmt: skip


def test_a_revision_name_sizes_the_vm_by_that_captured_revision() -> None:
    """KubeVirt's `revisionName`: a ControllerRevision of the namespace (what a VM there
    captured) sizes the VM, whatever the object is now; a missing one is refused by name."""
    small = {"cpu": {"guest": 2}, "memory": {"guest": "128Mi"}}
    captured = Revision("VirtualMachineClusterInstancetype", "small", "a-small-v1beta1-1", small)
    pref = Revision("VirtualMachineClusterPreference", "p", "a-p-v1beta1-1", {})
    a = VMState(name="a", namespace="ns", exists=True,
                revisions={"instancetype": captured, "preference": pref})  # fmt: skip
    now = InstancetypeState(exists=True, version=7, spec={"cpu": {"guest": 4},
                                                          "memory": {"guest": "1Gi"}})  # fmt: skip
    known = {"virt.clusterinstancetype._.small": now}

    def vm(revision: str, namespace: str = "ns") -> VMState:
        return VMState(name="b", namespace=namespace, exists=True, spec={
            "instancetype": {"name": "small", "revisionName": revision}})  # fmt: skip

    b = vm("a-small-v1beta1-1")
    [event] = captures(b, known=known, vms={"a": a})
    assert event == m.InstancetypeRevisionCaptured(
        which="instancetype", object_kind="VirtualMachineClusterInstancetype", name="small",
        revision="a-small-v1beta1-1", spec=small)  # fmt: skip
    sized, guard = effective(b, known=known, vms={"a": a})
    assert (sized.spec["template"]["spec"]["domain"]["cpu"]["sockets"], guard()) == (2, "")
    for revision, namespace, why in (
        ("nope", "ns", 'controllerrevisions.apps "nope" not found'),
        ("a-small-v1beta1-1", "other", 'controllerrevisions.apps "a-small-v1beta1-1" not found'),
        ("a-p-v1beta1-1", "ns",
         "unexpected type in ControllerRevision: *v1beta1.VirtualMachineClusterPreference"),
    ):  # fmt: skip
        lost = vm(revision, namespace)
        assert captures(lost, known=known, vms={"a": a}) == []
        with pytest.raises(ValidationError) as err:
            admit(lost.spec, namespace=namespace, known=known, vms={"a": a})
        assert err.value.message == f"Failure to find instancetype: {why}"


def test_reference_policy_expand_writes_the_instance_type_into_the_vm() -> None:
    """KubeVirt's `instancetype.referencePolicy`: expand (VMs that captured nothing yet) and
    expandAll (every VM, from its capture) write the effective spec into the VM."""
    assert config_of(None).reference_policy == "reference"
    spec = {"configuration": {"instancetype": {"referencePolicy": "expand"}}}
    assert (read_spec(spec), config_of(spec).reference_policy) == ([], "expand")
    with pytest.raises(ValidationError) as err:
        read_spec({"configuration": {"instancetype": {"referencePolicy": "inline"}}})
    assert err.value.message == (
        'spec.configuration.instancetype.referencePolicy: Unsupported value: "inline": '
        'supported values: "reference", "expand", "expandAll"')  # fmt: skip

    known = {"virt.clusterinstancetype._.small": InstancetypeState(
        exists=True, spec={"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}})}  # fmt: skip
    vm = VMState(name="a", namespace="ns", exists=True, spec={
        "instancetype": {"name": "small"}, "running": False,
        "template": {"spec": {"domain": {"devices": {}}}}})  # fmt: skip
    [event] = expansion(vm, known=known, vms={}, policy="expand")
    assert event == m.VMSpecChanged(
        spec={"running": False, "template": {"spec": {"domain": {
            "devices": {}, "cpu": {"sockets": 2, "cores": 1, "threads": 1},
            "memory": {"guest": "1Gi"}}}}},
        changed=["instancetype", "template.spec.domain.cpu",
                 "template.spec.domain.memory"])  # fmt: skip
    assert expansion(vm, known=known, vms={}, policy="reference") == []
    held = Revision("VirtualMachineClusterInstancetype", "small", "a-small-v1beta1-1",
                    {"cpu": {"guest": 1}, "memory": {"guest": "64Mi"}})  # fmt: skip
    kept = VMState(**{**{f: getattr(vm, f) for f in VMState.__struct_fields__},
                      "revisions": {"instancetype": held}})  # fmt: skip
    assert expansion(kept, known=known, vms={}, policy="expand") == []
    [event] = expansion(kept, known=known, vms={}, policy="expandAll")
    assert isinstance(event, m.VMSpecChanged)
    assert event.spec["template"]["spec"]["domain"]["memory"] == {"guest": "64Mi"}
