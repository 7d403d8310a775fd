"""KubeVirt's `inferFromVolume`: a VM's instance type and preference named by its claim's labels,
resolved at the VM's apply and recorded in its spec; KubeVirt's refusals, and its Ignore policy.

The CLI runs as a subprocess; the orchestrator and a test-driver node run in-process.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from clirun import Result, virtbus
from driverstack import Stack

from events.errors import ValidationError
from events.infer import infer
from events.manifest import to_commands
from events.volumes import VolumeState

KINDS = """\
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterInstancetype
metadata: {name: medium}
spec: {cpu: {guest: 2, maxSockets: 6}, memory: {guest: 256Mi}}
---
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachinePreference
metadata: {name: linux}
spec: {devices: {preferredDiskBus: sata}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: golden
  labels:
    instancetype.kubevirt.io/default-instancetype: medium
    instancetype.kubevirt.io/default-preference: linux
    instancetype.kubevirt.io/default-preference-kind: VirtualMachinePreference
  annotations: {volume.kubernetes.io/selected-node: node-a}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 8Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: plain}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 8Mi}}
"""


def vm(name: str, *, volume: str, policy: str = "", templates: str = "",
       memory: str = "") -> str:  # fmt: skip
    """A VM inferring both from its volume `disk` (`volume`: that volume's source)."""
    extra = f", inferFromVolumeFailurePolicy: {policy}" if policy else ""
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Halted
  instancetype: {{inferFromVolume: disk{extra}}}
  preference: {{inferFromVolume: disk{extra}}}
{templates}  template:
    spec:
      domain:
        devices: {{disks: [{{name: disk}}]}}
{memory}      volumes:
      - {{name: disk, {volume}}}
"""


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def vm_spec(st: Stack, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = (await cli(st, "get", "vm", name, "-o", "json")).json()["spec"]
    return spec


async def test_a_vm_infers_its_instance_type_from_a_claim_and_from_a_data_volume_template(
    stack: Stack,
) -> None:
    await stack.node("node-a")
    (await cli(stack, "apply", "-f", "-", stdin=KINDS)).ok()
    (await cli(stack, "wait", "pvc", "golden", "--for", "jsonpath={.status.phase}=Bound",
               "--timeout", "30")).ok()  # fmt: skip
    labels = (await cli(stack, "get", "pvc", "golden", "-o", "json")).json()["metadata"]["labels"]
    assert labels == {
        "instancetype.kubevirt.io/default-instancetype": "medium",
        "instancetype.kubevirt.io/default-preference": "linux",
        "instancetype.kubevirt.io/default-preference-kind": "VirtualMachinePreference",
    }
    golden = "persistentVolumeClaim: {claimName: golden}"
    out = (await cli(stack, "apply", "-f", "-", stdin=vm("direct", volume=golden))).ok()
    assert out.out == "virtualmachine.kubevirt.io/direct created\n"
    spec = await vm_spec(stack, "direct")
    # KubeVirt's webhook writes what it inferred into the VM: the names, no inferFromVolume.
    assert (spec["instancetype"], spec["preference"]) == (
        {"name": "medium"}, {"name": "linux", "kind": "VirtualMachinePreference"})  # fmt: skip

    dvt = """\
  dataVolumeTemplates:
  - metadata: {name: root}
    spec:
      source: {pvc: {name: golden}}
      storage: {resources: {requests: {storage: 8Mi}}}
"""
    cloned = vm("cloned", volume="dataVolume: {name: root}", templates=dvt)
    (await cli(stack, "apply", "-f", "-", stdin=cloned)).ok()
    spec = await vm_spec(stack, "cloned")
    assert (spec["instancetype"], spec["preference"]) == (
        {"name": "medium"}, {"name": "linux", "kind": "VirtualMachinePreference"})  # fmt: skip
    (await cli(stack, "start", "cloned")).ok()
    s = await stack.until("cloned", "Running")
    # Sized by the inferred instance type: its vCPUs, memory and hotplug room (maxSockets).
    assert s.size is not None
    assert (s.size.sockets, s.size.max_sockets, s.size.guest) == (2, 6, 256 << 20)


async def test_inference_refused_in_kubevirts_words_or_ignored_by_policy(stack: Stack) -> None:
    await stack.node("node-a")
    (await cli(stack, "apply", "-f", "-", stdin=KINDS)).ok()
    plain = "persistentVolumeClaim: {claimName: plain}"
    refused = await cli(stack, "apply", "-f", "-", stdin=vm("strict", volume=plain))
    assert (refused.code, refused.err) == (1, (
        "error: strict: unable to find required instancetype.kubevirt.io/default-instancetype "
        "label on the volume\n"))  # fmt: skip
    nowhere = "persistentVolumeClaim: {claimName: nowhere}"
    lost = await cli(stack, "apply", "-f", "-", stdin=vm("lost", volume=nowhere))
    assert lost.err == 'error: lost: persistentvolumeclaims "nowhere" not found\n'
    unnamed = vm("unnamed", volume=plain).replace("inferFromVolume: disk", "inferFromVolume: os")
    missing = await cli(stack, "apply", "-f", "-", stdin=unnamed)
    assert missing.err == "error: unnamed: unable to find volume os to infer defaults\n"
    for name in ("strict", "lost", "unnamed"):
        assert (await cli(stack, "get", "vm", name)).code == 1  # nothing was made

    # Ignore: the matchers go, the VM keeps its own memory and runs with it.
    memory = "        memory: {guest: 128Mi}\n"
    (await cli(stack, "apply", "-f", "-",
               stdin=vm("lenient", volume=plain, policy="Ignore", memory=memory))).ok()  # fmt: skip
    spec = await vm_spec(stack, "lenient")
    assert ("instancetype" in spec, "preference" in spec) == (False, False)
    (await cli(stack, "start", "lenient")).ok()
    s = await stack.until("lenient", "Running")
    assert s.size is not None and (s.size.sockets, s.size.guest) == (1, 128 << 20)


def test_data_volumes_their_clones_and_other_volumes_as_kubevirts_inference_reads_them() -> None:
    labelled = {"instancetype.kubevirt.io/default-instancetype": "big",
                "instancetype.kubevirt.io/default-instancetype-kind":
                    "VirtualMachineInstancetype"}  # fmt: skip
    claims = {
        "dv": VolumeState(exists=True, data_volume=True, labels=labelled),
        "copy": VolumeState(exists=True, data_volume=True, source="clone:golden"),
        "golden": VolumeState(exists=True, labels=labelled),
        "blank": VolumeState(exists=True, data_volume=True),
    }

    def spec(volume: dict[str, Any], policy: str = "Reject") -> dict[str, Any]:
        return {"instancetype": {"inferFromVolume": "d", "inferFromVolumeFailurePolicy": policy},
                "template": {"spec": {"domain": {"memory": {"guest": "1Gi"}},
                                      "volumes": [{"name": "d", **volume}]}}}  # fmt: skip

    def inferred(volume: dict[str, Any], policy: str = "Reject") -> dict[str, Any]:
        return infer(spec(volume, policy), namespace="ns",
                     claims=lambda ns, name: claims.get(name))  # fmt: skip

    def refused(volume: dict[str, Any]) -> tuple[str, str]:
        with pytest.raises(ValidationError) as err:
            inferred(volume)
        return err.value.field, err.value.message

    want = {"name": "big", "kind": "VirtualMachineInstancetype"}
    for name in ("dv", "copy"):  # the DataVolume's labels, else its source claim's
        assert inferred({"dataVolume": {"name": name}})["instancetype"] == want
    # Ignore, inferred: the VM's own memory goes (virtctl's fallback), as KubeVirt's handler does
    assert inferred({"dataVolume": {"name": "dv"}}, "Ignore") == {
        "instancetype": want, "template": {"spec": {"domain": {},
                                                    "volumes": [{"name": "d", "dataVolume":
                                                                 {"name": "dv"}}]}}}  # fmt: skip
    field = "spec.instancetype.inferFromVolume"
    assert refused({"dataVolume": {"name": "blank"}}) == (
        field,
        ("unable to infer defaults from DataVolumeSpec as DataVolumeSource is not supported"),
    )
    assert refused({"containerDisk": {"image": "x"}}) == (
        field,
        "unable to infer defaults from volume d as type is not supported",
    )
    assert "instancetype" not in inferred({"containerDisk": {"image": "x"}}, "Ignore")
    assert refused({"dataVolume": {"name": "gone"}}) == (
        field,
        'persistentvolumeclaims "gone" not found',
    )


@pytest.mark.parametrize(("matcher", "field", "message"), [
    ("{name: a, inferFromVolume: disk}", "spec.instancetype.name",
     "Name should not be provided when InferFromVolume is used within the instancetype matcher"),
    ("{kind: VirtualMachineInstancetype, inferFromVolume: disk}", "spec.instancetype.kind",
     "Kind should not be provided when InferFromVolume is used within the instancetype matcher"),
    ("{}", "spec.instancetype",
     "Either Name or InferFromVolume should be provided within the instancetype matcher"),
    ("{inferFromVolume: disk, inferFromVolumeFailurePolicy: Maybe}",
     "spec.instancetype.inferFromVolumeFailurePolicy",
     "Invalid value 'Maybe' for InferFromVolumeFailurePolicy"),
])  # fmt: skip
def test_a_matcher_is_checked_at_apply_as_kubevirts_mutator_checks_it(
    matcher: str, field: str, message: str
) -> None:
    doc = vm("x", volume="persistentVolumeClaim: {claimName: golden}").replace(
        "instancetype: {inferFromVolume: disk}", f"instancetype: {matcher}"
    )
    with pytest.raises(ValidationError) as err:
        to_commands(yaml.safe_load(doc))
    assert (err.value.field, err.value.message) == (field, f"{field}: {message}")
