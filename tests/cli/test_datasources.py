"""CDI DataSources end to end: apply, get, describe, delete and history of one; a DataVolume
whose sourceRef names one cloned from its claim (or refused in CDI's words); `create vm
--volume-import type:ds` applied, its instance type and preference inferred through the
DataSource (its labels first, then its claim's, as KubeVirt reads them).

The CLI runs as a subprocess; the orchestrator and a test-driver node run in-process.
"""

from __future__ import annotations

from clirun import Result, virtbus
from driverstack import Stack

from events.datasources import DataSourceState
from events.errors import ValidationError
from events.infer import infer
from events.names import Ref
from events.volumes import VolumeState

GOLDEN = """\
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterInstancetype
metadata: {name: medium}
spec: {cpu: {guest: 2}, memory: {guest: 256Mi}}
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
  namespace: images
  labels:
    instancetype.kubevirt.io/default-instancetype: small
    instancetype.kubevirt.io/default-preference: linux
    instancetype.kubevirt.io/default-preference-kind: VirtualMachinePreference
  annotations: {volume.kubernetes.io/selected-node: node-a}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 8Mi}}
"""
# The DataSource's own label wins over its claim's (`small`); the preference is the claim's.
FEDORA = """\
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataSource
metadata:
  name: fedora
  namespace: images
  labels: {instancetype.kubevirt.io/default-instancetype: medium}
spec:
  source:
    pvc: {name: golden}
"""


def dv(name: str, source_ref: str) -> str:
    return f"""\
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {{name: {name}}}
spec:
  sourceRef: {source_ref}
  storage: {{}}
"""


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def test_a_data_source_is_applied_shown_cloned_inferred_through_and_deleted(
    stack: Stack,
) -> None:
    await stack.node("node-a")
    (await cli(stack, "apply", "-f", "-", stdin=GOLDEN)).ok()
    made = (await cli(stack, "apply", "-f", "-", stdin=FEDORA)).ok()
    assert made.out == "datasource.cdi.kubevirt.io/fedora created\n"
    again = (await cli(stack, "apply", "-f", "-", stdin=FEDORA)).ok()
    assert again.out == "datasource.cdi.kubevirt.io/fedora unchanged\n"
    (await cli(stack, "wait", "pvc", "golden", "-n", "images", "--for",
               "jsonpath={.status.phase}=Bound", "--timeout", "30")).ok()  # fmt: skip
    shown = (await cli(stack, "get", "das", "fedora", "-n", "images", "-o", "json")).json()
    assert (shown["spec"], shown["status"]["conditions"]) == (
        {"source": {"pvc": {"name": "golden", "namespace": "images"}}},  # filled in, as CDI's
        [{"type": "Ready", "status": "True", "reason": "Ready",
          "message": "DataSource is ready to be consumed"}],
    )  # fmt: skip
    names = await cli(stack, "get", "datasources", "-A", "-o", "jsonpath={.items[*].metadata.name}")
    assert names.ok().out == "fedora"

    # Bad input: a snapshot source is refused naming it (no VolumeSnapshots), nothing recorded.
    snap = FEDORA.replace("pvc: {name: golden}", "snapshot: {name: s, namespace: images}")
    refused = await cli(stack, "apply", "-f", "-", stdin=snap.replace("fedora", "snap"))
    assert (refused.code, refused.err) == (
        1,
        "error: spec.source.snapshot: virtbus has no VolumeSnapshots; give spec.source.pvc\n",
    )
    assert (await cli(stack, "get", "das", "snap", "-n", "images")).code == 1

    # A DataVolume naming it clones its claim (from another namespace), sized as the source.
    ref = "{kind: DataSource, name: fedora, namespace: images}"
    (await cli(stack, "apply", "-f", "-", stdin=dv("root", ref))).ok()
    (await cli(stack, "wait", "dv", "root", "--for", "jsonpath={.status.phase}=Succeeded",
               "--timeout", "30")).ok()  # fmt: skip
    root = (await cli(stack, "get", "dv", "root", "-o", "json")).json()
    assert root["spec"]["source"] == {"pvc": {"namespace": "images", "name": "golden"}}
    size = (await cli(stack, "get", "pvc", "root", "-o",
                      "jsonpath={.spec.resources.requests.storage}")).ok().out  # fmt: skip
    assert size == "8Mi"
    # Bad input: one naming a DataSource that does not exist, in CDI's words.
    lost = await cli(stack, "apply", "-f", "-", stdin=dv("lost", "{kind: DataSource, name: gone}"))
    assert (lost.code, lost.err) == (
        1,
        "error: lost: SourceRef DataSource/default/gone not found\n",
    )

    # virtctl's DataSource import, inferred through the DataSource, applied as printed.
    printed = (
        await cli(
            stack,
            "create",
            "vm",
            "--name",
            "booted",
            "--volume-import",
            "type:ds,src:images/fedora,name:os",
            "--run-strategy",
            "Halted",
        )
    ).ok()
    (await cli(stack, "apply", "-f", "-", stdin=printed.out)).ok()
    spec = (await cli(stack, "get", "vm", "booted", "-o", "json")).json()["spec"]
    assert (spec["instancetype"], spec["preference"]) == (
        {"name": "medium"}, {"name": "linux", "kind": "VirtualMachinePreference"})  # fmt: skip
    (await cli(stack, "wait", "dv", "os", "--for", "jsonpath={.status.phase}=Succeeded",
               "--timeout", "30")).ok()  # fmt: skip

    gone = (await cli(stack, "delete", "datasource", "fedora", "-n", "images")).ok()
    assert gone.out == 'datasource.cdi.kubevirt.io "fedora" deleted\n'
    missing = await cli(stack, "get", "das", "fedora", "-n", "images")
    assert missing.code == 1
    # CDI reads a sourceRef at create only: the DataVolume applied again is what was made.
    kept = (await cli(stack, "apply", "-f", "-", stdin=dv("root", ref))).ok()
    assert kept.out == "datavolume.cdi.kubevirt.io/root unchanged\n"
    history = [type(r.envelope.data).__name__
               for r in await stack.store.read(Ref("datasource", "images", "fedora"))]  # fmt: skip
    assert history == ["DataSourceApplied", "DataSourceDeleted"]  # the unchanged apply: nothing


def test_inference_through_a_data_source_reads_its_labels_then_its_claim() -> None:
    spec = {"instancetype": {"inferFromVolume": "disk"},
            "dataVolumeTemplates": [{"metadata": {"name": "root"}, "spec": {
                "sourceRef": {"kind": "DataSource", "name": "ds"}}}],
            "template": {"spec": {"volumes": [{"name": "disk",
                                               "dataVolume": {"name": "root"}}]}}}  # fmt: skip
    label = "instancetype.kubevirt.io/default-instancetype"
    claim = VolumeState(exists=True, labels={label: "from-claim"})
    source = {"source": {"pvc": {"name": "c", "namespace": "default"}}}
    ds = DataSourceState(exists=True, namespace="default", name="ds", spec=source)

    def run(found: DataSourceState | None) -> dict[str, object]:
        return infer(spec, namespace="default", claims=lambda ns, n: claim,
                     datasources=lambda ns, n: found)  # fmt: skip

    assert run(ds)["instancetype"] == {"name": "from-claim"}
    labelled = DataSourceState(exists=True, labels={label: "own"}, spec=ds.spec)
    assert run(labelled)["instancetype"] == {"name": "own"}
    for found, why in (
        (None, 'datasources.cdi.kubevirt.io "ds" not found'),
        (
            DataSourceState(exists=True),
            "unable to infer defaults from DataSource that doesn't provide DataVolumeSourcePVC",
        ),
    ):
        try:
            run(found)
        except ValidationError as err:
            assert (err.message, err.field) == (why, "spec.instancetype.inferFromVolume")
        else:
            raise AssertionError(f"{found} inferred")
