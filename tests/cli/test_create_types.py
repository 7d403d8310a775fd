"""virtctl's `create instancetype` and `create preference` as the user guide types them: the
manifest printed exactly, each bad flag refused naming it, and what is printed applied and used
by a VM made with `create vm` (the CLI a subprocess against an in-process orchestrator)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from clirun import Result, virtbus
from driverstack import Stack

from events.errors import ValidationError
from events.instancetypes import matcher
from virtctl.createvm import VMSpecFlags, generate


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def test_generated_instance_type_and_preference_size_a_generated_vm(stack: Stack) -> None:
    await stack.node("node-a")
    itype = (await cli(stack, "create", "instancetype", "--name", "small", "--cpu", "2",
                       "--memory", "128Mi", "--iothreadspolicy", "shared")).ok().out  # fmt: skip
    assert itype == (
        "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\n"
        "metadata:\n  creationTimestamp: null\n  name: small\nspec:\n  cpu:\n    guest: 2\n"
        "  ioThreadsPolicy: shared\n  memory:\n    guest: 128Mi\n"
    )
    pref = (await cli(stack, "create", "preference", "--namespaced", "--name", "cores",
                      "--cpu-topology", "cores", "--machine-type", "q35")).ok().out  # fmt: skip
    assert pref == (
        "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachinePreference\n"
        "metadata:\n  creationTimestamp: null\n  name: cores\nspec:\n  cpu:\n"
        "    preferredCPUTopology: cores\n  machine:\n    preferredMachineType: q35\n"
    )
    group = "instancetype.kubevirt.io"
    for text, made in ((itype, f"virtualmachineclusterinstancetype.{group}/small"),
                       (pref, f"virtualmachinepreference.{group}/cores")):  # fmt: skip
        applied = await cli(stack, "apply", "-f", "-", stdin=text)
        assert applied.ok().out == f"{made} created\n"

    vm = (await cli(stack, "create", "vm", "--name", "sized", "--instancetype", "small",
                    "--preference", "virtualmachinepreference/cores")).ok().out  # fmt: skip
    assert (await cli(stack, "apply", "-f", "-", stdin=vm)).ok().out == (
        "virtualmachine.kubevirt.io/sized created\n"
    )  # (runStrategy Always, create vm's default: it starts)
    s = await stack.until("sized", "Running")
    assert s.size is not None
    assert (s.size.sockets, s.size.cores, s.size.threads, s.size.guest) == (1, 2, 1, 128 << 20)


async def test_generated_names_and_the_namespace_of_a_namespaced_kind() -> None:
    """virtctl's names: `clusterinstancetype-xxxxx`, and with a namespace given (virtctl's
    overridden context) the namespaced kind in it."""
    cluster = (await virtbus("create", "instancetype", "--cpu", "1", "--memory", "1Gi")).ok().out
    assert re.fullmatch(
        r"apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\n"
        r"metadata:\n  creationTimestamp: null\n  name: clusterinstancetype-[a-z0-9]{5}\nspec:\n"
        r"  cpu:\n    guest: 1\n  memory:\n    guest: 1Gi\n", cluster)  # fmt: skip
    scoped = (await virtbus("create", "preference", "-n", "team-a")).ok().out
    assert re.fullmatch(
        r"apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachinePreference\n"
        r"metadata:\n  creationTimestamp: null\n  name: preference-[a-z0-9]{5}\n"
        r"  namespace: team-a\nspec: \{\}\n", scoped)  # fmt: skip


@pytest.mark.parametrize(("args", "error"), [
    (("instancetype", "--cpu", "2"), 'required flag(s) "memory" not set'),
    (("instancetype",), 'required flag(s) "cpu", "memory" not set'),
    (("instancetype", "--cpu", "0", "--memory", "1Gi"), "cpu value must be greater than zero"),
    (("instancetype", "--cpu", "1", "--memory", "lots"),
     "failed to parse \"--memory\" flag: quantity: 'lots' is not a quantity "
     "(like 2G, 512Mi, 1.5Gi or 1024)"),
    (("instancetype", "--cpu", "1", "--memory", "1Gi", "--iothreadspolicy", "dedicated"),
     'failed to parse "--iothreadspolicy" flag: IOThread must be of value auto or shared'),
    (("instancetype", "--cpu", "1", "--memory", "1Gi", "--gpu", "name:g1"),
     'failed to parse "--gpu" flag: deviceName must be specified'),
    # Well-formed, and refused by name: apply would refuse the instance type it writes.
    (("instancetype", "--cpu", "1", "--memory", "1Gi", "--gpu", "name:g1,devicename:nvidia"),
     "--gpu: virtbus passes no GPUs through (its nodes have no device plugins); an instance "
     "type with GPUs would be refused by apply"),
    (("instancetype", "--cpu", "1", "--memory", "1Gi", "--hostdevice", "name:h,devicename:x"),
     "--hostdevice: virtbus passes no host devices through (its nodes have no device plugins); "
     "an instance type with host devices would be refused by apply"),
    (("instancetype", "--cpu", "1", "--memory", "1Gi", "--name", "Not_A_Name"),
     "name: 'Not_A_Name' is not a DNS-1123 label (lower-case letters, digits and '-', starting "
     "and ending with a letter or digit)"),
    (("preference", "--cpu-topology", "diagonal"),
     'failed to parse "--cpu-topology" flag: CPU topology must have a value of sockets, cores, '
     "threads or spread"),
])  # fmt: skip
async def test_each_bad_flag_is_refused_naming_it(args: tuple[str, ...], error: str) -> None:
    got = await virtbus("create", *args)
    assert (got.code, got.out, got.err) == (1, "", f"error: {error}\n")


@pytest.mark.parametrize(("kind", "found"), [
    ("VirtualMachinePreference", ("preference", "p")),
    ("virtualmachinepreference", ("preference", "p")),  # as `create vm` writes it
    ("virtualmachineclusterpreferences", ("clusterpreference", "p")),
    (None, ("clusterpreference", "p")),
])  # fmt: skip
def test_a_vm_names_the_kind_of_its_preference_in_any_case_and_number(
    kind: str | None, found: tuple[str, str]
) -> None:
    assert matcher({"preference": {"name": "p", "kind": kind}}, "preference") == found


def test_a_kind_of_the_other_family_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as refused:
        matcher({"preference": {"name": "p", "kind": "virtualmachineinstancetype"}}, "preference")
    assert (refused.value.message, refused.value.field) == (
        "spec.preference.kind: 'virtualmachineinstancetype' is not a kind of preference",
        "spec.preference.kind",
    )


# --- create vm's inference (virtctl's --infer-instancetype/--infer-preference) -------------------

LABELLED = """\
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterInstancetype
metadata: {name: medium}
spec: {cpu: {guest: 2}, memory: {guest: 256Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: golden
  labels: {instancetype.kubevirt.io/default-instancetype: medium}
  annotations: {volume.kubernetes.io/selected-node: node-a}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 8Mi}}
"""


async def test_create_vm_infers_from_its_boot_claim_by_default_and_the_vm_is_sized_so(
    stack: Stack,
) -> None:
    """virtctl's default: a claim as the boot volume is inferred from, quietly (the Ignore policy,
    create vm's memory kept as the fallback); the applied VM takes the claim's instance type."""
    await stack.node("node-a")
    (await cli(stack, "apply", "-f", "-", stdin=LABELLED)).ok()
    made = (await cli(stack, "create", "vm", "--name", "inferred", "--volume-pvc",
                      "src:golden")).ok().out  # fmt: skip
    spec = yaml.safe_load(made)["spec"]
    quiet = {"inferFromVolume": "golden", "inferFromVolumeFailurePolicy": "Ignore"}
    assert (spec["instancetype"], spec["preference"]) == (quiet, quiet)
    assert spec["template"]["spec"]["domain"]["memory"] == {"guest": "512Mi"}
    applied = await cli(stack, "apply", "-f", "-", stdin=made)
    assert applied.ok().out == "virtualmachine.kubevirt.io/inferred created\n"
    s = await stack.until("inferred", "Running")  # (runStrategy Always)
    assert s.size is not None and (s.size.sockets, s.size.guest) == (2, 256 << 20)


def _flags(**given: Any) -> VMSpecFlags:
    return VMSpecFlags(name="x", **given)


def test_create_vm_infers_from_the_first_boot_disk_or_the_volume_named() -> None:
    booted = generate(_flags(pvcs=["src:data"], imports=["type:pvc,src:ns/gold,name:root,"
                                                         "bootorder:1"]))["spec"]  # fmt: skip
    assert booted["instancetype"]["inferFromVolume"] == "root"  # boot order 1, not the first
    named = generate(_flags(pvcs=["src:data"], containerdisks=["src:reg/img"],
                            infer_instancetype_from="data", infer_preference=False))  # fmt: skip
    assert named["spec"]["instancetype"] == {"inferFromVolume": "data"}  # explicit: no policy
    assert "preference" not in named["spec"]
    assert "memory" not in named["spec"]["template"]["spec"]["domain"]  # the instance type's


def test_create_vm_imports_a_data_source_as_a_source_ref_and_infers_from_it() -> None:
    spec = generate(_flags(imports=["type:ds,src:golden/fedora,name:root,size:2Gi,bootorder:1",
                                    "type:ds,src:rhel,name:other"]))["spec"]  # fmt: skip
    assert spec["dataVolumeTemplates"] == [
        {"metadata": {"creationTimestamp": None, "name": "root"},
         "spec": {"sourceRef": {"kind": "DataSource", "name": "fedora", "namespace": "golden"},
                  "storage": {"resources": {"requests": {"storage": "2Gi"}}}}},
        {"metadata": {"creationTimestamp": None, "name": "other"},  # no namespace: the VM's
         "spec": {"sourceRef": {"kind": "DataSource", "name": "rhel"}, "storage": {}}},
    ]  # fmt: skip
    assert spec["instancetype"] == {"inferFromVolume": "root",
                                    "inferFromVolumeFailurePolicy": "Ignore"}  # fmt: skip


def test_create_vm_infers_nothing_quietly_from_what_cannot_be_inferred_from() -> None:
    for given in ({}, {"containerdisks": ["src:reg/img"]},
                  {"imports": ["type:blank,size:1Gi"]}, {"memory": "1Gi"}):  # fmt: skip
        spec = generate(_flags(**given))["spec"]
        assert ("instancetype" in spec, "preference" in spec) == (False, False), given


@pytest.mark.parametrize(("given", "error"), [
    ({"infer_instancetype": True},
     "at least one volume is needed to infer an instance type or preference"),
    ({"containerdisks": ["src:reg/img"], "infer_preference": True},
     "inference of instancetype or preference works only with DataSources, DataVolumes or "
     "PersistentVolumeClaims"),
    ({"imports": ["type:blank,size:1Gi,name:b"], "infer_instancetype_from": "b"},
     "this DataVolume is not valid to infer an instancetype or preference from (source needs "
     "to be PVC, Registry or Snapshot, sourceRef needs to be DataSource)"),
    ({"pvcs": ["src:data"], "infer_preference_from": "nothere"},
     "there is no volume with name 'nothere'"),
    ({"memory": "1Gi", "infer_instancetype": True},
     "if any flags in the group [memory instancetype infer-instancetype infer-instancetype-from] "
     "are set none of the others can be; [infer-instancetype memory] were all set"),
    ({"preference": "p", "infer_preference_from": "x"},
     "if any flags in the group [preference infer-preference infer-preference-from] are set none "
     "of the others can be; [infer-preference-from preference] were all set"),
])  # fmt: skip
def test_create_vm_refuses_an_inference_asked_for_that_cannot_be(
    given: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        generate(_flags(**given))
    assert refused.value.message == error


def test_create_vm_ga_manage_ssh_adds_virtctls_runcmd() -> None:
    vmi = generate(_flags(user="fedora", ga_manage_ssh=True))["spec"]["template"]["spec"]
    assert vmi["volumes"] == [{"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": (
        "#cloud-config\nuser: fedora\nruncmd:\n"
        "  - [ setsebool, -P, 'virt_qemu_ga_manage_ssh', 'on' ]")}}]  # fmt: skip
    with pytest.raises(ValidationError) as both:
        generate(_flags(cloud_init_user_data="I2Nsb3VkLWNvbmZpZw==", ga_manage_ssh=True))
    assert both.value.message == (
        "if any flags in the group [cloud-init-user-data user ssh-key password-file "
        "ga-manage-ssh] are set none of the others can be"
    )
