"""kubectl's habits end to end, as a KubeVirt user types them: `TYPE/NAME`, `-o name`, `-o
jsonpath=`, `-l`, `create -f` (AlreadyExists), `delete -f`, `patch --type merge|json`, and
get/describe/wait/delete on every kind. The CLI is a subprocess; the orchestrator runs in-process
with node workers on libvirt's test driver; waits follow the log, never a sleep.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import yaml
from clirun import Result, cli_env, virtbus
from driverstack import Stack
from manifests import replica_set, vm

from events import model as m
from events.names import Ref

SET = "virtualmachineinstancereplicaset.kubevirt.io"
NO_VMS = "No resources found in default namespace.\n"


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


def write(tmp_path: Path, name: str, *docs: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


async def two_nodes(st: Stack) -> None:
    await st.node("node-a")
    await st.node("node-b")


async def test_type_name_output_name_jsonpath_and_selectors(stack: Stack, tmp_path: Path) -> None:
    await two_nodes(stack)
    docs = [vm("a", labels={"app": "web", "tier": "front"}), vm("b", labels={"app": "db"}),
            vm("c"), vm("lone", kind="VirtualMachineInstance"), replica_set("rs")]  # fmt: skip
    applied = await cli(stack, "apply", "-f", write(tmp_path, "all.yaml", *docs))
    assert applied.ok().out == (
        "virtualmachine.kubevirt.io/a created\nvirtualmachine.kubevirt.io/b created\n"
        "virtualmachine.kubevirt.io/c created\nvirtualmachineinstance.kubevirt.io/lone created\n"
        "virtualmachineinstancereplicaset.kubevirt.io/rs created\n"
    )
    for vmi in ("lone", "rs-0"):  # kubectl's own wait, on the VMIs, in TYPE/NAME form
        waited = await cli(stack, "wait", f"vmis/{vmi}", "--for", "condition=Ready")
        assert waited.ok().out == f"virtualmachineinstance.kubevirt.io/{vmi} condition met\n"

    # A VMI applied alone and a replica set's VMIs are VMIs, not VMs.
    names = (await cli(stack, "get", "vms", "-o", "name")).ok().out
    assert names == "".join(f"virtualmachine.kubevirt.io/{n}\n" for n in ("a", "b", "c"))
    vmis = (await cli(stack, "get", "vmis", "-o", "name")).ok().out
    assert (
        vmis == "virtualmachineinstance.kubevirt.io/lone\nvirtualmachineinstance.kubevirt.io/rs-0\n"
    )
    missing = await cli(stack, "get", "vm/lone")
    assert (missing.code, missing.err) == (
        1,
        'error: virtualmachines.kubevirt.io "lone" not found\n',
    )

    assert (
        await cli(stack, "get", "vm/a", "-o", "name")
    ).ok().out == "virtualmachine.kubevirt.io/a\n"
    selected = {
        "app=web": "a", "app!=web": "b c", "app in (web, db)": "a b", "app notin (web)": "b c",
        "app": "a b", "!app": "c", "app=web,tier=front": "a", "app=web,tier=back": "",
    }  # fmt: skip
    for selector, expected in selected.items():
        got = await cli(stack, "get", "vms", "-l", selector, "-o",
                        "jsonpath={.items[*].metadata.name}")  # fmt: skip
        assert got.ok().out == expected, selector  # kubectl adds no newline
    empty = await cli(stack, "get", "vms", "-l", "app=nothing")
    assert empty.ok().out == NO_VMS
    table = (await cli(stack, "get", "vmis", "-l", "app=rs")).ok().out.splitlines()
    assert [r.split()[0] for r in table] == ["NAME", "rs-0"]

    template = '{range .items[*]}{.metadata.name}={.status.printableStatus}{"\\n"}{end}'
    ranged = await cli(stack, "get", "vms", "-o", f"jsonpath={template}")
    assert ranged.ok().out == "a=Stopped\nb=Stopped\nc=Stopped\n"
    one = await cli(stack, "get", "vm", "a", "-o", "jsonpath={.metadata.labels.app}")
    assert one.ok().out == "web"
    rs = await cli(stack, "get", "vmirs/rs", "-o", "jsonpath={.spec.replicas}/{.status.replicas}")
    assert rs.ok().out == "1/1"
    nodes = await cli(stack, "get", "nodes", "-o", "name")
    assert nodes.ok().out == "node/node-a\nnode/node-b\n"
    every = await cli(stack, "get", "vm", "-A", "-o", "name")
    assert every.ok().out == names

    described = (await cli(stack, "describe", "vmirs/rs")).ok().out.splitlines()
    assert described[:6] == ["Name:         rs", "Namespace:    default", "Labels:       <none>",
                             "Annotations:  <none>", "API Version:  kubevirt.io/v1",
                             "Kind:         VirtualMachineInstanceReplicaSet"]  # fmt: skip
    assert "  Replicas:  1" in described
    vmi_described = (await cli(stack, "describe", "vmi", "lone")).ok().out.splitlines()
    assert vmi_described[:3] == ["Name:           lone", "Namespace:      default",
                                 "Kind:           VirtualMachineInstance"]  # fmt: skip


async def test_create_refuses_what_exists_and_delete_f_removes_what_a_file_names(
    stack: Stack, tmp_path: Path
) -> None:
    await two_nodes(stack)
    path = write(tmp_path, "two.yaml", vm("x"), replica_set("set"))
    created = await cli(stack, "create", "-f", path)
    assert created.ok().out == ("virtualmachine.kubevirt.io/x created\n"
                                f"{SET}/set created\n")  # fmt: skip
    again = await cli(stack, "create", "-f", path)
    assert (again.code, again.out, again.err) == (1, "", (
        f'Error from server (AlreadyExists): error when creating "{path}": '
        'virtualmachines.kubevirt.io "x" already exists\n'
        f'Error from server (AlreadyExists): error when creating "{path}": '
        'virtualmachineinstancereplicasets.kubevirt.io "set" already exists\n'))  # fmt: skip
    rejected = [r.envelope.data for r in await stack.store.read(Ref.vm("x"))
                if isinstance(r.envelope.data, m.CommandRejected)]  # fmt: skip
    assert [(e.command, e.field) for e in rejected] == [("ApplyVM", "metadata.name")]
    unchanged = await cli(stack, "apply", "-f", path)  # apply still takes what exists
    assert unchanged.ok().out == ("virtualmachine.kubevirt.io/x unchanged\n"
                                  f"{SET}/set unchanged\n")  # fmt: skip
    await cli(stack, "wait", "vmi", "set-0", "--for", "jsonpath={.status.phase}=Running")

    deleted = await cli(stack, "delete", "-f", path)
    assert deleted.ok().out == ('virtualmachine.kubevirt.io "x" deleted\n'
                                f'{SET} "set" deleted\n')  # fmt: skip
    gone = await cli(stack, "wait", "vmi/set-0", "--for", "delete")  # the set's VMIs go with it
    assert gone.ok().out == "virtualmachineinstance.kubevirt.io/set-0 condition met\n"
    for what in ("vm/x", "vmirs/set"):
        assert (await cli(stack, "get", what)).code == 1
    twice = await cli(stack, "delete", "-f", path)
    assert (twice.code, twice.out) == (1, "")
    assert twice.err == (
        'error: virtualmachines.kubevirt.io "x" not found\n'
        'error: virtualmachineinstancereplicaset.kubevirt.io "set" not found\n'
    )


async def test_patch_merge_and_json_are_recorded_like_an_apply(stack: Stack) -> None:
    await two_nodes(stack)
    (await cli(stack, "apply", "-f", "-", stdin=json.dumps(vm("p")))).ok()
    merged = await cli(stack, "patch", "vm", "p", "--type", "merge", "-p",
                       '{"spec":{"runStrategy":"Always"}}')  # fmt: skip
    assert merged.ok().out == "virtualmachine.kubevirt.io/p patched\n"
    running = await cli(
        stack, "wait", "vm/p", "--for", "jsonpath={.status.printableStatus}=Running"
    )
    assert running.ok().out == "virtualmachine.kubevirt.io/p condition met\n"

    memory = "/spec/template/spec/domain/resources/requests/memory"
    labels = {"op": "add", "path": "/metadata/labels", "value": {"size": "m"}}
    ops = json.dumps([{"op": "replace", "path": memory, "value": "128Mi"}, labels])
    # (as the user guide writes it, `-p='[...]' --type='json'`: pflag's `-p=VALUE`)
    patched = await cli(stack, "patch", "vm/p", "--type=json", f"-p={ops}")
    assert patched.ok().out == "virtualmachine.kubevirt.io/p patched\n"
    got = await cli(stack, "get", "vm", "p", "-o",
                    "jsonpath={.spec.template.spec.domain.resources.requests.memory} "
                    "{.metadata.labels.size} {.status.conditions[?(@.type==\"RestartRequired\")]"
                    ".status}")  # fmt: skip
    assert got.ok().out == "128Mi m True"  # a running VM takes it at its next start
    same = await cli(stack, "patch", "vm", "p", "--type", "merge", "-p",
                     '{"metadata":{"labels":{"size":"m"}}}')  # fmt: skip
    assert same.ok().out == "virtualmachine.kubevirt.io/p patched (no change)\n"
    changes = [r.envelope.data for r in await stack.store.read(Ref.vm("p"))
               if isinstance(r.envelope.data, m.VMSpecChanged)]  # fmt: skip
    assert [sorted(e.changed) for e in changes] == [
        ["runStrategy"], ["template.spec.domain.resources"]]  # fmt: skip
    assert changes[1].labels == {"size": "m"}

    bad = await cli(stack, "patch", "vm", "p", "--type", "json", "-p",
                    '[{"op":"remove","path":"/spec/nothing"}]')  # fmt: skip
    assert (bad.code, bad.err) == (
        1,
        "error: --patch: [0] /spec/nothing: 'nothing' does not exist\n",
    )
    invalid = await cli(stack, "patch", "vm", "p", "--type", "merge", "-p",
                        '{"spec":{"runStrategy":"Sometimes"}}')  # fmt: skip
    assert invalid.code == 1 and "spec.runStrategy" in invalid.err, invalid.err
    scaled = await cli(stack, "patch", "vmirs", "nope", "--type", "merge", "-p", "{}")
    assert (scaled.code, scaled.err) == (
        1, 'error: virtualmachineinstancereplicasets.kubevirt.io "nope" not found\n')  # fmt: skip


async def test_repeated_f_takes_every_file_in_order(stack: Stack, tmp_path: Path) -> None:
    """kubectl's `-f A -f B` (the user guide applies an instance type and its VM so): each file
    in turn, every one of them even when one fails, and the exit code says one did. It used to
    keep only the last file, silently."""
    kind = {"apiVersion": "instancetype.kubevirt.io/v1beta1",
            "kind": "VirtualMachineClusterInstancetype", "metadata": {"name": "csmall"},
            "spec": {"cpu": {"guest": 1}, "memory": {"guest": "64Mi"}}}  # fmt: skip
    sized = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
             "metadata": {"name": "sized"},
             "spec": {"runStrategy": "Halted", "instancetype": {"name": "csmall"},
                      "template": {"spec": {"domain": {"devices": {}}}}}}  # fmt: skip
    a, b = write(tmp_path, "a.yaml", kind), write(tmp_path, "b.yaml", sized)
    applied = await cli(stack, "apply", "-f", a, "-f", b)
    assert applied.ok().out == (
        "virtualmachineclusterinstancetype.instancetype.kubevirt.io/csmall created\n"
        "virtualmachine.kubevirt.io/sized created\n"
    )
    other = write(tmp_path, "c.yaml", {**sized, "metadata": {"name": "other"}})
    half = await cli(stack, "create", "-f", b, "-f", other)
    assert (half.code, half.out, half.err) == (1, "virtualmachine.kubevirt.io/other created\n", (
        f'Error from server (AlreadyExists): error when creating "{b}": '
        'virtualmachines.kubevirt.io "sized" already exists\n'))  # fmt: skip
    missing = str(tmp_path / "missing.yaml")
    nothing = await cli(stack, "delete", "-f", other, "-f", missing)  # checked before any
    assert (nothing.code, nothing.out, nothing.err) == (
        1, "", f'error: the path "{missing}" does not exist\n')  # fmt: skip
    gone = await cli(stack, "delete", "-f", other, "-f", b, "-f", a)
    assert gone.ok().out == (
        'virtualmachine.kubevirt.io "other" deleted\n'
        'virtualmachine.kubevirt.io "sized" deleted\n'
        'virtualmachineclusterinstancetype.instancetype.kubevirt.io "csmall" deleted\n'
    )
    twice = await cli(stack, "apply", "-f", "-", "-f", "-", stdin="")
    assert (twice.code, twice.err) == (1, "error: -f -: stdin can be given once\n")


async def test_patch_of_the_kubevirt_object_and_of_an_instance_type(stack: Stack) -> None:
    """The user guide turns feature gates on with `patch kv kubevirt --type merge -p ...`: the
    object (the default before any apply) patched and applied as its history records; and an
    instance type patched the same way."""
    gates = {"spec": {"configuration": {"developerConfiguration": {
        "featureGates": ["Snapshot", "ExpandDisks"]}}}}  # fmt: skip
    done = await cli(stack, "patch", "kv", "kubevirt", "-n", "kubevirt", "--type", "merge",
                     "-p", json.dumps(gates))  # fmt: skip
    assert done.ok().out == "kubevirt.kubevirt.io/kubevirt patched\n"
    got = (await cli(stack, "get", "kv", "kubevirt", "-n", "kubevirt", "-o", "json")).json()
    assert got["spec"]["configuration"]["developerConfiguration"]["featureGates"] == [
        "Snapshot", "ExpandDisks"]  # fmt: skip
    [applied] = [r.envelope.data for r in await stack.store.read(
        Ref("kubevirt", "kubevirt", "kubevirt"))]  # fmt: skip
    assert isinstance(applied, m.KubeVirtApplied)
    assert applied.changes == ["featureGates +ExpandDisks", "featureGates +Snapshot",
                               "featureGates -DataVolumes", "featureGates -HostDisk",
                               "featureGates -LiveMigration"]  # fmt: skip

    kind = {"apiVersion": "instancetype.kubevirt.io/v1beta1",
            "kind": "VirtualMachineInstancetype", "metadata": {"name": "csmall"},
            "spec": {"cpu": {"guest": 1}, "memory": {"guest": "64Mi"}}}  # fmt: skip
    (await cli(stack, "apply", "-f", "-", stdin=json.dumps(kind))).ok()
    memory = [{"op": "replace", "path": "/spec/memory/guest", "value": "128Mi"}]
    patched = await cli(stack, "patch", "VirtualMachineInstancetype/csmall", "--type", "json",
                        "-p", json.dumps(memory))  # fmt: skip
    assert (
        patched.ok().out == "virtualmachineinstancetype.instancetype.kubevirt.io/csmall patched\n"
    )
    spec = (await cli(stack, "get", "vminstancetype", "csmall", "-o", "json")).json()["spec"]
    assert spec == {"cpu": {"guest": 1}, "memory": {"guest": "128Mi"}}


async def test_edit_in_the_users_editor_as_kubectl_edit(stack: Stack) -> None:
    """`kubectl edit` (the user guide edits the KubeVirt object so): the YAML in $EDITOR, the
    result applied on the version read; saved unchanged, nothing; a rename refused, the edited
    copy kept. The editor here is `sed -i`, as a script would drive it."""

    async def edit(editor: str, *args: str) -> Result:
        env = {**cli_env(stack.url), "EDITOR": editor}
        env.pop("KUBE_EDITOR", None)
        return await virtbus("edit", *args, env=env)

    (await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(vm("p")))).ok()
    done = await edit("sed -i s/64Mi/96Mi/", "vm", "p")
    assert (done.code, done.out, done.err) == (0, "virtualmachine.kubevirt.io/p edited\n", "")
    path = "{.spec.template.spec.domain.resources.requests.memory}"
    memory = await cli(stack, "get", "vm/p", "-o", f"jsonpath={path}")
    assert memory.ok().out == "96Mi"
    same = await edit("true", "vm/p")
    assert (same.code, same.out) == (0, "Edit cancelled, no changes made.\n")
    renamed = await edit("sed -i s/name:\\ p$/name:\\ q/", "vm", "p")
    assert renamed.code == 1
    said, _, kept = renamed.err.partition("your changes are kept in ")
    assert said == ("error: virtualmachine.kubevirt.io/p edited copy not applied: metadata.name: "
                    "an edit cannot rename; ")  # fmt: skip
    copy = Path(kept.strip())
    try:
        assert yaml.safe_load(await asyncio.to_thread(copy.read_text))["metadata"] == {
            "name": "q", "namespace": "default"}  # fmt: skip
    finally:
        await asyncio.to_thread(copy.unlink)

    gates = await edit("sed -i s/HostDisk/Snapshot/", "kubevirt", "kubevirt", "-n", "kubevirt")
    assert gates.ok().out == "kubevirt.kubevirt.io/kubevirt edited\n"
    got = (await cli(stack, "get", "kv", "kubevirt", "-n", "kubevirt", "-o", "json")).json()
    assert got["spec"]["configuration"]["developerConfiguration"]["featureGates"] == [
        "DataVolumes", "LiveMigration", "Snapshot"]  # fmt: skip


async def test_label_adds_replaces_and_removes_as_kubectl_label(stack: Stack) -> None:
    (await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(vm("p")))).ok()
    added = await cli(stack, "label", "vm", "p", "app=web", "tier=db")
    assert added.ok().out == "virtualmachine.kubevirt.io/p labeled\n"
    taken = await cli(stack, "label", "vm/p", "tier=cache")
    assert (taken.code, taken.err) == (
        1, "error: 'tier' already has a value (db), and --overwrite is false\n")  # fmt: skip
    (await cli(stack, "label", "vm/p", "tier=cache", "--overwrite")).ok()
    removed = await cli(stack, "label", "vm", "p", "app-")
    assert removed.ok().out == "virtualmachine.kubevirt.io/p labeled\n"
    again = await cli(stack, "label", "vm", "p", "tier=cache")
    assert again.ok().out == "virtualmachine.kubevirt.io/p not labeled\n"
    labels = (await cli(stack, "get", "vm", "p", "-o", "json")).json()["metadata"]["labels"]
    assert labels == {"tier": "cache"}
    bad = await cli(stack, "label", "vm", "p", "x")
    assert (bad.code, bad.err) == (1, "error: invalid label spec: x\n")
    vmi = await cli(stack, "label", "vmi", "p", "a=b")
    assert (vmi.code, vmi.err) == (
        1,
        "error: labeling virtualmachineinstances.kubevirt.io is not supported by virtbus: patch "
        "the virtualmachine or virtualmachineinstancereplicaset that owns it\n",
    )


async def test_a_lone_vmis_spec_cannot_change_its_labels_can(stack: Stack) -> None:
    """virt-api's VMI update admitter: the spec of a VMI is what runs; a re-apply that changes it
    is refused in its words (it used to say `configured`); a label may change."""
    await stack.node("node-a")
    vmi = vm("solo", kind="VirtualMachineInstance")
    made = await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(vmi))
    assert made.ok().out == "virtualmachineinstance.kubevirt.io/solo created\n"
    bigger = copy.deepcopy(vmi)
    bigger["spec"]["domain"]["resources"]["requests"]["memory"] = "128Mi"
    refused = await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(bigger))
    assert (refused.code, refused.err) == (1, "error: solo: update of VMI object is restricted\n")
    labelled = {**vmi, "metadata": {"name": "solo", "labels": {"team": "a"}}}
    again = await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(labelled))
    assert again.ok().out == "virtualmachineinstance.kubevirt.io/solo configured\n"


async def test_the_user_guides_kubevirt_object_habits(stack: Stack) -> None:
    """The object as KubeVirt's API server stores it (its spec's defaults there to patch), a JSON
    patch adding under one of them (the user guide's workloadUpdateMethods: recorded, and
    warned as not acted on), and `edit kubevirt -n kubevirt` with no name: the one there is."""
    shown = (await cli(stack, "get", "kv", "kubevirt", "-n", "kubevirt", "-o", "json")).json()
    assert {k: shown["spec"][k] for k in shown["spec"] if k != "configuration"} == {
        "certificateRotateStrategy": {}, "customizeComponents": {},
        "imagePullPolicy": "IfNotPresent", "workloadUpdateStrategy": {}}  # fmt: skip
    methods = [{"op": "add", "path": "/spec/workloadUpdateStrategy/workloadUpdateMethods",
                "value": ["LiveMigrate"]}]  # fmt: skip
    done = await cli(stack, "--namespace", "kubevirt", "patch", "kv", "kubevirt",
                     f"-p={json.dumps(methods)}", "--type=json")  # fmt: skip
    assert (done.code, done.out, done.err.splitlines()[0]) == (
        0, "kubevirt.kubevirt.io/kubevirt patched\n",
        "Warning: spec.workloadUpdateStrategy: recorded; virtbus does not act on it")  # fmt: skip
    # (then what the seed's gates earn on any apply of the object: DataVolumes, LiveMigration)
    assert [ln.split(" is ")[0] for ln in done.err.splitlines()[1:]] == [
        "Warning: spec.configuration.developerConfiguration.featureGates: DataVolumes",
        "Warning: feature gate LiveMigration"]  # fmt: skip
    got = (await cli(stack, "get", "kv", "kubevirt", "-n", "kubevirt", "-o", "json")).json()
    assert got["spec"]["workloadUpdateStrategy"] == {"workloadUpdateMethods": ["LiveMigrate"]}

    env = {**cli_env(stack.url), "EDITOR": "sed -i s/HostDisk/Snapshot/"}
    env.pop("KUBE_EDITOR", None)
    edited = await virtbus("edit", "kubevirt", "-n", "kubevirt", env=env)
    assert (edited.code, edited.out) == (0, "kubevirt.kubevirt.io/kubevirt edited\n")
    path = "{.spec.configuration.developerConfiguration.featureGates}"
    gates = await cli(stack, "get", "kv", "kubevirt", "-n", "kubevirt", "-o", f"jsonpath={path}")
    assert json.loads(gates.ok().out) == ["DataVolumes", "LiveMigration", "Snapshot"]
    # Elsewhere there is none: said, naming where it is; other kinds still need a name.
    none = await virtbus("edit", "kubevirt", env=env)
    assert (none.code, none.err) == (
        1,
        'error: no KubeVirt object in namespace "default" (it is in "kubevirt")\n',
    )
    vm_ = await virtbus("edit", "vm", env=env)
    assert (vm_.code, vm_.err.splitlines()[-1]) == (
        2,
        "error: vm: give a name, as vm NAME or vm/NAME",
    )
