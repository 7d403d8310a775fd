"""kubectl's habits the KubeVirt user guide and examples lean on (issue 17), end to end: `apply
-k`/`create -k`/`delete -k` (kustomize), global flags before the verb, `annotate`, and `label` of
a claim. The CLI is a subprocess; the orchestrator runs in-process with node workers on libvirt's
test driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from clirun import Result, virtbus
from driverstack import Stack
from manifests import vm

from events import model as m
from events.names import Ref

PVC = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
       "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Mi"}}}}  # fmt: skip
READS = ("resources, namespace, namePrefix, nameSuffix, commonLabels, labels, "
         "commonAnnotations")  # fmt: skip


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


def kustomization(directory: Path, body: dict[str, Any], *docs: tuple[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(body))
    for name, doc in docs:
        (directory / name).write_text(yaml.safe_dump_all(doc if isinstance(doc, list) else [doc]))
    return directory


def overlay(tmp_path: Path) -> Path:
    """A base (a claim and a VM, one label) and an overlay on it, as kustomize's docs lay out."""
    kustomization(tmp_path / "base", {"resources": ["pvc.yaml", "vm.yaml"],
                                      "commonLabels": {"app": "web"}},
                  ("pvc.yaml", PVC), ("vm.yaml", vm("a", labels={"team": "x"})))  # fmt: skip
    return kustomization(tmp_path / "prod", {
        "resources": ["../base"], "namespace": "prod", "namePrefix": "p-", "nameSuffix": "-1",
        "labels": [{"pairs": {"tier": "db"}, "includeSelectors": False}],
        "commonAnnotations": {"owner": "ops"}})  # fmt: skip


async def test_apply_create_and_delete_k_build_a_kustomization_as_f_reads_a_file(
    stack: Stack, tmp_path: Path
) -> None:
    prod = overlay(tmp_path)
    made = await cli(stack, "apply", "-k", str(prod))
    assert (made.code, made.out, made.err) == (
        0,
        "persistentvolumeclaim/p-data-1 created\nvirtualmachine.kubevirt.io/p-a-1 created\n",
        "",
    )
    got = (await cli(stack, "get", "vm", "p-a-1", "-n", "prod", "-o", "json")).json()
    assert got["metadata"]["labels"] == {"team": "x", "app": "web", "tier": "db"}
    assert got["metadata"]["annotations"] == {"owner": "ops"}
    claim = (await cli(stack, "get", "pvc", "p-data-1", "-n", "prod", "-o", "json")).json()
    assert claim["metadata"]["labels"] == {"app": "web", "tier": "db"}
    again = await cli(stack, "apply", "--kustomize", str(prod))
    assert again.ok().out == ("persistentvolumeclaim/p-data-1 unchanged\n"
                              "virtualmachine.kubevirt.io/p-a-1 unchanged\n")  # fmt: skip
    created = await cli(stack, "create", "-k", str(prod))
    assert (created.code, created.out) == (1, "")
    assert created.err == (
        f'Error from server (AlreadyExists): error when creating "{prod}": '
        'persistentvolumeclaims "p-data-1" already exists\n'
        f'Error from server (AlreadyExists): error when creating "{prod}": '
        'virtualmachines.kubevirt.io "p-a-1" already exists\n'
    )
    gone = await cli(stack, "delete", "-k", str(prod))
    assert gone.ok().out == ('persistentvolumeclaim "p-data-1" deleted\n'
                             'virtualmachine.kubevirt.io "p-a-1" deleted\n')  # fmt: skip
    remade = await cli(stack, "create", "-k", str(prod))
    assert remade.ok().out == ("persistentvolumeclaim/p-data-1 created\n"
                               "virtualmachine.kubevirt.io/p-a-1 created\n")  # fmt: skip


async def test_what_kustomize_does_beyond_that_is_refused_by_name(
    stack: Stack, tmp_path: Path
) -> None:
    """Each refusal is exit 1 before anything is sent (a usage mistake, -f with -k: exit 2)."""
    patched = kustomization(tmp_path / "patched", {"resources": ["vm.yaml"], "patches": []},
                            ("vm.yaml", vm("a")))  # fmt: skip
    found = patched / "kustomization.yaml"
    refused = await cli(stack, "apply", "-k", str(patched))
    assert (refused.code, refused.out, refused.err) == (
        1,
        "",
        f"error: kustomize: {found}: patches: not supported by virtbus (it reads {READS})\n",
    )
    remote = kustomization(tmp_path / "remote", {"resources": ["https://example.com/x.yaml"]})
    far = await cli(stack, "apply", "-k", str(remote))
    assert far.err == (f"error: kustomize: {remote / 'kustomization.yaml'}: resources: "
                       "https://example.com/x.yaml: remote resources are not supported by "
                       "virtbus; give a file or a directory\n")  # fmt: skip
    # the user guide's -k of a git URL (common-instancetypes)
    url = "https://github.com/kubevirt/common-instancetypes.git"
    git = await cli(stack, "apply", "-k", url)
    said = f"-k {url}: remote kustomizations are not supported by virtbus; clone it and give"
    assert (git.code, git.err) == (1, f"error: {said} the directory\n")
    twice = kustomization(tmp_path / "twice", {"resources": ["vm.yaml", "same.yaml"]},
                          ("vm.yaml", vm("a")), ("same.yaml", vm("a")))  # fmt: skip
    dup = await cli(stack, "apply", "-k", str(twice))
    assert dup.err == (f"error: kustomize: {twice / 'kustomization.yaml'}: resources: "
                       "VirtualMachine a is given twice\n")  # fmt: skip
    (tmp_path / "bare").mkdir()
    bare = await cli(stack, "apply", "-k", str(tmp_path / "bare"))
    assert (bare.code, bare.err) == (1, "error: unable to find one of 'kustomization.yaml', "
                                        "'kustomization.yml' or 'Kustomization' in directory "
                                        f"'{tmp_path / 'bare'}'\n")  # fmt: skip
    both = await cli(stack, "apply", "-k", str(patched), "-f", "x.yaml")
    assert (both.code, both.err) == (2, "error: only one of -f or -k can be specified\n")
    neither = await cli(stack, "apply")
    assert (neither.code, neither.err) == (2, "error: must specify one of -f and -k\n")
    assert await stack.store.read(Ref.vm("a", "default")) == []


async def test_global_flags_before_the_verb_as_after_it(stack: Stack, tmp_path: Path) -> None:
    (await cli(stack, "apply", "-f", "-", "-n", "prod", stdin=yaml.safe_dump(vm("a")))).ok()
    listed = await virtbus("-n", "prod", "-v=6", "--server", stack.url, "get", "vms", "-o", "name")
    assert (listed.code, listed.out, listed.err) == (0, "virtualmachine.kubevirt.io/a\n", "")
    every = await virtbus("--v=4", "-A", "get", "vms", "-o", "name", "-s", stack.url, "-v", "2")
    assert every.ok().out == "virtualmachine.kubevirt.io/a\n"
    kubeconfig = await virtbus("--kubeconfig", "k", "get", "vms", "-s", stack.url)
    assert (kubeconfig.code, kubeconfig.out, kubeconfig.err) == (
        2, "", "error: --kubeconfig: virtbus does not read kubeconfigs: it reaches its bus, given "
               "by --server (or $VIRTBUS_NATS_URL) and --creds\n")  # fmt: skip
    context = await virtbus("get", "vms", "--context=prod", "-s", stack.url)
    assert (context.code, context.err) == (
        2, "error: --context: virtbus does not read kubeconfigs: it reaches its bus, given by "
           "--server (or $VIRTBUS_NATS_URL) and --creds\n")  # fmt: skip
    # -A before a verb that does not list: the verb's own refusal, as after it
    start = await virtbus("-A", "start", "a", "-s", stack.url)
    assert (start.code, start.err.splitlines()[-1]) == (
        2, "Error: No such option: --all-namespaces Did you mean --namespace?")  # fmt: skip
    events = [r.envelope.data for r in await stack.store.read(Ref.vm("a", "prod"))]
    assert [type(e) for e in events] == [m.VMCreated]


async def test_annotate_adds_replaces_and_removes_as_kubectl_annotate(stack: Stack) -> None:
    """`annotate` shares `label`'s path: the VM's annotations changed and applied on the version
    read, one `VMSpecChanged` each; kubectl's annotate says `annotated` even when nothing
    changed (its label says `not labeled`)."""
    (await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(vm("p", labels={"a": "b"})))).ok()
    added = await cli(stack, "annotate", "vm", "p", "owner=ops", "note=first")
    assert (added.code, added.out, added.err) == (0, "virtualmachine.kubevirt.io/p annotated\n", "")
    taken = await cli(stack, "annotate", "vm/p", "note=second")
    assert (taken.code, taken.err) == (
        1, "error: 'note' already has a value (first), and --overwrite is false\n")  # fmt: skip
    (await cli(stack, "annotate", "vm/p", "note=second", "--overwrite")).ok()
    removed = await cli(stack, "annotate", "vm", "p", "owner-")
    assert removed.ok().out == "virtualmachine.kubevirt.io/p annotated\n"
    same = await cli(stack, "annotate", "vm", "p", "note=second")
    assert same.ok().out == "virtualmachine.kubevirt.io/p annotated\n"
    meta = (await cli(stack, "get", "vm", "p", "-o", "json")).json()["metadata"]
    assert (meta["annotations"], meta["labels"]) == ({"note": "second"}, {"a": "b"})
    events = [r.envelope.data for r in await stack.store.read(Ref.vm("p", "default"))]
    assert [type(e) for e in events] == [m.VMCreated, *[m.VMSpecChanged] * 3]
    assert [e.annotations for e in events[1:]] == [  # type: ignore[union-attr]
        {"owner": "ops", "note": "first"},
        {"owner": "ops", "note": "second"},
        {"note": "second"},
    ]
    # bad input: kubectl's words, exit 1 (a usage mistake: exit 2); nothing is written
    bad = await cli(stack, "annotate", "vm", "p", "x")
    assert (bad.code, bad.err) == (1, "error: invalid annotation format: x\n")
    both = await cli(stack, "annotate", "vm", "p", "k=v", "k-")
    assert (both.code, both.err) == (
        1,
        "error: can not both modify and remove the following annotation(s) in the same "
        "command: k\n",
    )
    none = await cli(stack, "annotate", "vm", "p")
    assert (none.code, none.err) == (
        2, "error: annotate: give at least one annotation update (k=v or k-)\n")  # fmt: skip
    kv = await cli(stack, "annotate", "kv", "kubevirt", "-n", "kubevirt", "a=b")
    assert (kv.code, kv.err) == (
        1,
        "error: annotating kubevirts.kubevirt.io is not supported by "
        "virtbus: it keeps the annotations of virtualmachines only\n",
    )
    assert len(await stack.store.read(Ref.vm("p", "default"))) == 4
    # a re-apply of the manifest is the VM's whole metadata, as for labels: they go
    again = await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(vm("p", labels={"a": "b"})))
    assert again.ok().out == "virtualmachine.kubevirt.io/p configured\n"
    assert "annotations" not in (await cli(stack, "get", "vm/p", "-o", "json")).json()["metadata"]


async def test_a_claims_labels_change_by_label_and_by_a_re_apply(stack: Stack) -> None:
    """A claim's labels (what a VM's inferFromVolume reads) change as a VM's do: `label pvc` is
    its manifest applied again with the new labels, on the version read (`VolumeLabeled`); a
    VM that inferred from the old ones keeps what its spec recorded."""
    made = await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(PVC))
    assert made.ok().out == "persistentvolumeclaim/data created\n"
    added = await cli(stack, "label", "pvc", "data", "tier=gold")
    assert (added.code, added.out, added.err) == (0, "persistentvolumeclaim/data labeled\n", "")
    same = await cli(stack, "label", "persistentvolumeclaim/data", "tier=gold")
    assert same.ok().out == "persistentvolumeclaim/data not labeled\n"
    taken = await cli(stack, "label", "pvc", "data", "tier=iron")
    assert (taken.code, taken.err) == (
        1, "error: 'tier' already has a value (gold), and --overwrite is false\n")  # fmt: skip
    relabelled = {**PVC, "metadata": {"name": "data", "labels": {"tier": "iron"}}}
    again = await cli(stack, "apply", "-f", "-", stdin=yaml.safe_dump(relabelled))
    assert again.ok().out == "persistentvolumeclaim/data configured\n"
    claim = (await cli(stack, "get", "pvc", "data", "-o", "json")).json()
    assert (claim["metadata"]["labels"], claim["spec"]["resources"]["requests"]["storage"]) == (
        {"tier": "iron"}, "1Mi")  # fmt: skip
    events = [r.envelope.data for r in await stack.store.read(Ref("volume", "default", "data"))]
    assert events[1:] == [m.VolumeLabeled(labels={"tier": "gold"}),
                          m.VolumeLabeled(labels={"tier": "iron"})]  # fmt: skip
    # refused: a claim that is not there, and annotations (a claim keeps none of its own)
    missing = await cli(stack, "label", "pvc", "nope", "a=b")
    assert (missing.code, missing.err) == (
        1, 'error: persistentvolumeclaims "nope" not found\n')  # fmt: skip
    noted = await cli(stack, "annotate", "pvc", "data", "a=b")
    assert (noted.code, noted.err) == (
        1, "error: annotating persistentvolumeclaims is not supported by virtbus: it keeps the "
           "annotations of virtualmachines only\n")  # fmt: skip
