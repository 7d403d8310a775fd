"""Hypothesis strategies for the fuzzing campaign of issue 12: real manifests, mutated anywhere.

Every strategy starts from a manifest a user could write (the seed, and KubeVirt-shaped VMs, VMIs,
replica sets, migrations, snapshots and restores) and breaks it at any path: a wrong type, null,
empty, huge or negative numbers, negative quantities, NaN, unicode and control characters, deep
nesting, 10k strings, duplicated list entries, deleted keys. Commands for the bus doors come from
the same mutations plus random bodies for every command kind and random bytes.

Profiles: "ci" (the default) is derandomized and bounded, so `make test` is reproducible and
takes about a minute; VIRTBUS_FUZZ=campaign runs many more examples (`make fuzz`).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from paths import SEED as SEED_FILE

from events.commands import COMMAND_CLASSES
from events.manifest import parse_documents

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile(
    "ci", derandomize=True, max_examples=300, deadline=None, suppress_health_check=_SUPPRESS
)
settings.register_profile(
    "campaign", max_examples=25_000, deadline=None, suppress_health_check=_SUPPRESS
)
settings.load_profile(os.environ.get("VIRTBUS_FUZZ", "ci"))
CAMPAIGN = os.environ.get("VIRTBUS_FUZZ") == "campaign"


def examples(ci: int, campaign: int) -> int:
    """max_examples per property: slow properties (a bus, libvirt) run fewer."""
    return campaign if CAMPAIGN else ci


[CENTOS7] = parse_documents(SEED_FILE.read_text())

_VM = "kubevirt.io/v1"


def _vm(name: str, spec: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"apiVersion": _VM, "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"runStrategy": "Always", "template": {"spec": spec}}, **top}  # fmt: skip


_CONTAINER_DISK_VM = _vm("cirros", {
    "domain": {
        "cpu": {"cores": 2, "sockets": 1, "threads": 1, "model": "host-model"},
        "memory": {"guest": "128Mi"},
        "devices": {
            "disks": [
                {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1, "cache": "none"},
                {"name": "cloudinit", "disk": {"bus": "virtio"}, "serial": "CI0001"},
                {"name": "scratch", "disk": {"bus": "scsi", "readonly": False}},
            ],
            "interfaces": [
                {"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"},
                {"name": "lan", "bridge": {}, "model": "e1000e", "bootOrder": 2},
            ],
            "autoattachGraphicsDevice": False,
            "video": {"type": "virtio"},
        },
        "firmware": {"bootloader": {"bios": {"useSerial": True}}},
        "machine": {"type": "q35"},
    },
    "networks": [{"name": "default", "pod": {}}, {"name": "lan", "multus": {"networkName": "br"}}],
    "nodeSelector": {"kubernetes.io/hostname": "node-a"},
    "terminationGracePeriodSeconds": 30,
    "volumes": [
        {"name": "root", "containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo"}},
        {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\npassword: x\n"}},
        {"name": "scratch", "emptyDisk": {"capacity": "2Gi"}},
    ],
})  # fmt: skip

_PVC_VM = _vm("db", {
    "domain": {
        "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "devices": {
            "disks": [
                {"name": "data", "disk": {}, "bootOrder": 1},
                {"name": "iso", "cdrom": {"bus": "sata"}},
                {"name": "cfg", "disk": {"bus": "sata"}},
            ],
            "interfaces": [{"name": "default", "masquerade": {}}],
        },
    },
    "networks": [{"name": "default", "pod": {}}],
    "volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "db-data"}},
        {"name": "iso", "persistentVolumeClaim": {"claimName": "install-iso", "readOnly": True}},
        {"name": "cfg", "cloudInitNoCloud": {"userDataBase64": "I2Nsb3VkLWNvbmZpZwo="}},
    ],
}, metadata={"name": "db", "namespace": "prod", "labels": {"app": "db"},
             "annotations": {"note": "keep"}})  # fmt: skip

_VMI = {
    "apiVersion": _VM, "kind": "VirtualMachineInstance", "metadata": {"name": "once"},
    "spec": copy.deepcopy(CENTOS7["spec"]["template"]["spec"]),
}  # fmt: skip
_VMIRS = {
    "apiVersion": _VM, "kind": "VirtualMachineInstanceReplicaSet",
    "metadata": {"name": "pool", "labels": {"tier": "web"}},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"tier": "web"}},
             "template": copy.deepcopy(_CONTAINER_DISK_VM["spec"]["template"])},
}  # fmt: skip
_MIGRATION = {
    "apiVersion": _VM, "kind": "VirtualMachineInstanceMigration",
    "metadata": {"name": "move-it", "namespace": "lab"}, "spec": {"vmiName": "centos7"},
}  # fmt: skip
_SNAPSHOT = {
    "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
    "metadata": {"name": "snap-1"},
    "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "centos7"}},
}  # fmt: skip
_RESTORE = {
    "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
    "metadata": {"name": "restore-1"},
    "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "centos7"},
             "virtualMachineSnapshotName": "snap-1"},
}  # fmt: skip

SEEDS: list[dict[str, Any]] = [
    CENTOS7, _CONTAINER_DISK_VM, _PVC_VM, _VMI, _VMIRS, _MIGRATION, _SNAPSHOT, _RESTORE,
]  # fmt: skip
VM_SEEDS: list[dict[str, Any]] = [CENTOS7, _CONTAINER_DISK_VM, _PVC_VM]


class Deep(int):
    """Stands for a list/map nest this deep until a test calls `realize`: hypothesis copies and
    prints its examples, and a 2000-level value would exhaust its recursion doing so."""

    def __repr__(self) -> str:
        return f"Deep({int(self)})"


def realize(doc: Any) -> Any:
    """A copy of `doc` with every `Deep(n)` marker replaced by a real nest n levels deep."""
    if isinstance(doc, Deep):
        return _deep(doc)
    doc = copy.deepcopy(doc)  # hypothesis may print the drawn example after the test ran
    stack = [doc] if isinstance(doc, dict | list) else []
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, value in list(pairs):
            if isinstance(value, Deep):
                item[key] = _deep(value)
            elif isinstance(value, dict | list):
                stack.append(value)
    return doc


def _deep(depth: int) -> Any:
    """A list/map alternation `depth` levels deep, built without recursion."""
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"x": value}
    return value


# Values that have broken parsers before, or could: each is tried at every path.
_SPECIAL: list[Any] = [
    None, "", [], {}, 0, -1, 1, 2**70, -(2**70), 2**63, 2**63 - 1, True, False, 1.5, -0.0,
    float("nan"), float("inf"), "NaN", "inf", "-1Gi", "-1", "0", "1e999999", "9" * 40 + "Ei",
    "0.0000001", "1e-9",
    "8Ei", "9007199254740992Ki", 2**31, 4097, 65,
    "Gi", "٣Gi", "x" * 10_000, "é\u200b漢字🙂", "\x00\x01\x1b[31m\x7f", "a.b",
    "*", ">", " ", "\n", "${HOME}", "../../etc/passwd", "<x/>", "&amp;", '"', "virtio\x00",
    Deep(100), Deep(2_000), [None], [[]], [{}], {"": None}, {"a": {"b": {"c": []}}},
]  # fmt: skip

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    | st.sampled_from([v for v in _SPECIAL[:40] if not isinstance(v, Deep | str) or len(v) < 99])
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every path in a document (the root too), each as the keys and indexes leading there."""
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
    while stack:
        value, at = stack.pop()
        out.append(at)
        if isinstance(value, dict):
            stack.extend((v, (*at, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*at, i)) for i, v in enumerate(value))
    return sorted(out, key=repr)  # a stable order, so a seed replays the same example


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _copy(value: Any) -> Any:
    """A deep copy, or the value itself when it is too deep to copy (then aliased, harmlessly)."""
    try:
        return copy.deepcopy(value)
    except RecursionError:
        return value


def _str(value: Any) -> str:
    """`str(value)`, or a stand-in for a value too deep to print."""
    try:
        return str(value)
    except RecursionError:
        return "deep"


@st.composite
def _mutate_once(draw: st.DrawFn, doc: Any) -> Any:
    """`doc` with one path changed; returns the new root (the root itself may be replaced)."""
    path = draw(st.sampled_from(paths(doc)))
    old = _get(doc, path)
    op = draw(st.sampled_from(
        ["special", "special", "random", "wrap_list", "wrap_map", "to_str", "delete", "dup",
         "extra_key", "swap_int"]
    ))  # fmt: skip
    if op == "special":
        special = draw(st.sampled_from(_SPECIAL))
        new = copy.deepcopy(special)
    elif op == "random":
        new = draw(json_values)
    elif op == "wrap_list":  # issue 12's case: ["x"] where "x" belongs
        new = [old]
    elif op == "wrap_map":
        new = {"value": old}
    elif op == "to_str":
        new = _str(old)
    elif op == "swap_int":
        new = draw(st.sampled_from([len(_str(old)), -len(_str(old)), 2**70, True]))
    else:
        new = old
    if not path:
        return new if op not in ("delete", "dup", "extra_key") else doc
    parent, key = _get(doc, path[:-1]), path[-1]
    if op == "delete":
        del parent[key]
    elif op == "dup" and isinstance(parent, list):  # duplicate names in lists
        parent.insert(key, _copy(old))
    elif op in {"dup", "extra_key"}:
        target = old if isinstance(old, dict) else parent
        if isinstance(target, dict):
            target[draw(st.sampled_from(["name", "bootOrder", "bus", "extra", "", "x" * 300]))] = (
                draw(json_values)
            )
    else:
        parent[key] = new
    return doc


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]] = SEEDS, most: int = 3) -> Any:
    """A seed manifest with one to `most` mutations, at any path."""
    doc: Any = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, most))):
        doc = draw(_mutate_once(doc))
    return doc


manifests = mutated()
vm_manifests = mutated(VM_SEEDS)

_FIELDS = {cls.__name__: [f.name for f in msgspec.structs.fields(cls)] for cls in COMMAND_CLASSES}
_NAMES = st.sampled_from(["fuzz-vm", "centos7", "a" * 63, "", "UPPER", "a.b", "*", "-x"])


@st.composite
def command_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON-ish body with the `kind` of a real command and random or special values in its
    fields (and in some that do not exist)."""
    kind = draw(st.sampled_from(sorted(_FIELDS)))
    body: dict[str, Any] = {"kind": kind, "name": draw(_NAMES)}
    for field in _FIELDS[kind]:
        if draw(st.booleans()):
            body[field] = draw(json_values | st.sampled_from(_SPECIAL))
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(json_values)
    if kind == "ApplyVM" and draw(st.booleans()):  # a mutated manifest's spec, as a bare client
        doc = draw(vm_manifests)
        if isinstance(doc, dict):
            body["spec"] = doc.get("spec")
    return body
