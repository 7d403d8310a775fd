"""KubeVirt manifests in, virtbus commands out.

Users bring the YAML they already write for KubeVirt. This module is the one place that reads it:
it checks what virtbus relies on (names, disks against volumes, interfaces against networks,
quantities), rejects what KubeVirt itself would reject with a `ValidationError` naming the field,
and warns about every field it does not know instead of dropping it silently.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import yaml

from events import fields as f
from events import kubevirt as kv
from events import migration_policies as mp
from events.commands import (
    ApplyDataSource,
    ApplyKubeVirt,
    ApplyMigrationPolicy,
    ApplyReplicaSet,
    ApplyVM,
    ApplyVMPool,
    Command,
    MigrateVM,
    RestoreVM,
    SnapshotVM,
)
from events.datasources import check_spec as check_datasource
from events.fields import fail as _fail
from events.instancetypes import API as INSTANCETYPE_API
from events.instancetypes import KINDS as INSTANCETYPE_KINDS
from events.manifest_instancetypes import check_matchers, instancetype_command
from events.manifest_reader import METADATA, Reader, names, strings
from events.manifest_storage import STORAGE_KINDS, dv_command, pvc_command
from events.names import check_name
from events.quantity import parse_quantity
from events.unsupported import other_kind

API_VERSION: Final = "kubevirt.io/v1"
DEPRECATED_API_VERSIONS: Final = frozenset({"kubevirt.io/v1alpha3"})
SNAPSHOT_API_VERSION: Final = "snapshot.kubevirt.io/v1beta1"
SNAPSHOT_KINDS: Final = ("VirtualMachineSnapshot", "VirtualMachineRestore")
RUN_STRATEGIES: Final = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")
MAX_REPLICAS: Final = 10_000  # events.commands.Replicas allows no more
# KubeVirt serves pools in v1beta1 (stored) and v1alpha1; both read alike, shown as v1beta1.
POOL_API_VERSION: Final = "pool.kubevirt.io/v1beta1"
POOL_API_VERSIONS: Final = (POOL_API_VERSION, "pool.kubevirt.io/v1alpha1")
KINDS: Final = ("VirtualMachine", "VirtualMachineInstance", "VirtualMachineInstanceReplicaSet",
                "VirtualMachineInstanceMigration", kv.KIND, *SNAPSHOT_KINDS)  # fmt: skip

# Known field names per level: virtbus acts on some and tolerates the rest; anything else warns.
_TOP: Final = names("apiVersion kind metadata spec status")
_VM_SPEC: Final = names(
    "running runStrategy template dataVolumeTemplates instancetype preference "
    "updateVolumesStrategy liveUpdateFeatures"
)
_RS_SPEC: Final = names("replicas selector template paused")
_POOL_SPEC: Final = names(
    "replicas selector virtualMachineTemplate scaleInStrategy updateStrategy maxUnavailable"
)
SORT_POLICIES: Final = ("AscendingOrder", "DescendingOrder", "Newest", "Oldest", "Random")
STATE_PRESERVATIONS: Final = ("Disabled", "Offline", "Online")
_KUBEVIRT_SPEC: Final = names(
    "configuration certificateRotateStrategy customizeComponents imagePullPolicy "
    "imagePullSecrets imageRegistry imageTag infra monitorAccount monitorNamespace "
    "serviceMonitorNamespace uninstallStrategy workloadUpdateStrategy workloads productName "
    "productVersion productComponent"
)
_MIGRATION_SPEC: Final = names("vmiName addedNodeSelector")
_SNAPSHOT_SPEC: Final = names("source deletionPolicy failureDeadline")
_RESTORE_SPEC: Final = names("target virtualMachineSnapshotName patches targetReadinessPolicy")


def parse_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML text; a top-level list or a `kind: List`
    contributes its items, as `kubectl apply` does."""
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise _fail("yaml", f"{where}: {exc.problem or exc.context or 'invalid YAML'}") from exc
    except yaml.YAMLError as exc:
        raise _fail("yaml", str(exc)) from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise _fail("yaml", "the document is nested too deeply") from exc
    docs: list[dict[str, Any]] = []
    for i, doc in enumerate(raw):
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else doc
        for j, item in enumerate(items if isinstance(items, list) else [items]):
            if item is None:
                continue
            if not isinstance(item, dict):
                where = f"documents[{i}]" + (f"[{j}]" if isinstance(items, list) else "")
                raise _fail(where, f"expected a mapping, got {type(item).__name__}")
            docs.append(item)
    return docs


def run_strategy_of(spec: dict[str, Any]) -> str:
    """The effective run strategy of a VM spec; `running` is KubeVirt's older spelling of it."""
    if spec.get("runStrategy") is not None:
        return str(spec["runStrategy"])
    return "Always" if spec.get("running") is True else "Halted"


def summarize(spec: dict[str, Any]) -> dict[str, Any]:
    """What the scheduler needs from a VM spec (or a bare VMI spec): memory, vCPUs, selector."""
    vmi = (spec.get("template") or {}).get("spec") or {} if "template" in spec else spec
    domain = vmi.get("domain") or {}
    cpu = domain.get("cpu") or {}
    # The scheduler reserves what the pod would request; guest memory stands in when unset.
    memory = ((domain.get("resources") or {}).get("requests") or {}).get("memory")
    memory = memory if memory is not None else (domain.get("memory") or {}).get("guest")
    return {
        "memory_bytes": 0 if memory is None else parse_quantity(memory, field="memory"),
        # `or 1`: an explicit null is unset (found by the fuzzer: int(None) in the controller).
        "cpus": int(cpu.get("cores") or 1)
        * int(cpu.get("sockets") or 1)
        * int(cpu.get("threads") or 1),
        "node_selector": dict(vmi.get("nodeSelector") or {}),
    }


def to_commands(
    doc: dict[str, Any], *, default_namespace: str = "default"
) -> tuple[list[Command], list[str]]:
    """The commands one manifest stands for, plus warnings about what virtbus ignores."""
    if not isinstance(doc, dict):
        raise _fail("document", f"expected a mapping, got {type(doc).__name__}")
    reader = Reader()
    # Typed before any set lookup: `apiVersion: {}` must be a rejection, not a TypeError.
    api, kind = (
        v if isinstance(v, str) else None for v in (doc.get("apiVersion"), doc.get("kind"))
    )
    shown_api, shown_kind = f.short(doc.get("apiVersion")), f.short(doc.get("kind"))
    other = {**STORAGE_KINDS, INSTANCETYPE_API: tuple(INSTANCETYPE_KINDS), mp.API: (mp.KIND,),
             **dict.fromkeys(POOL_API_VERSIONS, ("VirtualMachinePool",))}  # fmt: skip
    if api in ("instancetype.kubevirt.io/v1alpha1", "instancetype.kubevirt.io/v1alpha2"):
        reader.warn("apiVersion", f"{api} is deprecated; read as {INSTANCETYPE_API}")
        api = INSTANCETYPE_API
    storage = api is not None and api in other
    if storage and kind not in other[api or ""]:
        served = ", ".join(other[api or ""])
        raise _fail("kind", f"{shown_kind} is not supported in apiVersion {api}; virtbus serves "
                            f"{served} there")  # fmt: skip
    if storage:
        pass
    elif kind in SNAPSHOT_KINDS:
        if api == "snapshot.kubevirt.io/v1alpha1":
            reader.warn("apiVersion", f"{api} is deprecated; read as {SNAPSHOT_API_VERSION}")
        elif api != SNAPSHOT_API_VERSION:
            raise _fail("apiVersion", f"{shown_api} is not supported for {kind}; use "
                                      f"{SNAPSHOT_API_VERSION}")  # fmt: skip
    elif (why := other_kind(api, kind)) is not None:
        raise _fail("kind", f"{shown_kind} ({shown_api}): {why}")
    elif api in DEPRECATED_API_VERSIONS:
        reader.warn("apiVersion", f"{api} is deprecated; read as {API_VERSION}")
    elif api != API_VERSION:
        raise _fail("apiVersion", f"{shown_api} is not supported; use {API_VERSION} (v1 for "
                                  "PersistentVolumeClaim, cdi.kubevirt.io/v1beta1 for DataVolume, "
                                  f"{SNAPSHOT_API_VERSION} for snapshots)")  # fmt: skip
    if kind not in KINDS and not storage:
        raise _fail("kind", f"{shown_kind} is not supported; use one of {', '.join(KINDS)}")
    # Only plain JSON goes on: it is what the wire carries and the log replays unchanged.
    f.check_json(doc, "")
    reader.section(doc, "", fields=_TOP)
    meta = reader.section(doc.get("metadata"), "metadata", fields=METADATA)
    name = check_name(meta.get("name") or "", field="metadata.name")
    namespace = check_name(meta.get("namespace", default_namespace), field="metadata.namespace")
    labels = strings(meta.get("labels"), "metadata.labels")
    annotations = strings(meta.get("annotations"), "metadata.annotations")
    # Deep-copied so the command never aliases the caller's document.
    spec = copy.deepcopy(f.mapping(doc.get("spec"), "spec"))
    cmd: Command
    made: list[Command] = []  # what the object makes beside itself (a VM's DataVolumes)
    if kind == "VirtualMachinePool":
        cmd = _pool(spec, reader, name=name, namespace=namespace, labels=labels)
    elif kind == kv.KIND:
        reader.section(spec, "spec", fields=_KUBEVIRT_SPEC)
        reader.warns += kv.read_spec(spec)
        cmd = ApplyKubeVirt(name=name, namespace=namespace, spec=spec, labels=labels)
    elif kind == mp.KIND:
        reader.warns += mp.read_policy_spec(spec)
        cmd = ApplyMigrationPolicy(name=name, spec=spec, labels=labels)
    elif kind in INSTANCETYPE_KINDS:
        cmd = instancetype_command(kind or "", spec, reader, name=name, namespace=namespace,
                                   labels=labels)  # fmt: skip
    elif kind == "PersistentVolumeClaim":
        cmd = pvc_command(spec, reader, name=name, namespace=namespace, annotations=annotations,
                          labels=labels)  # fmt: skip
    elif kind == "DataVolume":
        cmd = dv_command(spec, reader, name=name, namespace=namespace, labels=labels)
    elif kind == "DataSource":
        cmd = ApplyDataSource(name=name, namespace=namespace, labels=labels,
                              spec=check_datasource(spec, namespace=namespace))  # fmt: skip
    elif kind == "VirtualMachine":
        reader.section(spec, "spec", fields=_VM_SPEC)
        _check_run_strategy(spec)
        check_matchers(spec, reader)
        reader.template(spec.get("template"), "spec.template", sized="instancetype" in spec)
        made = _data_volume_templates(spec, reader, vm=name, namespace=namespace)
        cmd = ApplyVM(
            name=name, namespace=namespace, spec=spec, labels=labels, annotations=annotations
        )
    elif kind == "VirtualMachineInstance":
        reader.vmi_spec(spec, "spec", sized=False, annotations=annotations)
        # Reshaped as a run-once VM, so the rest of virtbus only ever sees VM specs.
        template = {"metadata": {"labels": dict(labels)}, "spec": spec}
        cmd = ApplyVM(
            name=name, namespace=namespace, spec={"runStrategy": "Once", "template": template},
            labels=labels, annotations=annotations, source_kind="VirtualMachineInstance",
        )  # fmt: skip
    elif kind == "VirtualMachineInstanceReplicaSet":
        reader.section(spec, "spec", fields=_RS_SPEC)
        _replicas(spec)
        reader.template(spec.get("template"), "spec.template", sized=False)
        cmd = ApplyReplicaSet(name=name, namespace=namespace, spec=spec, labels=labels)
    elif kind == "VirtualMachineInstanceMigration":
        reader.section(spec, "spec", fields=_MIGRATION_SPEC)
        vmi = check_name(spec.get("vmiName") or "", field="spec.vmiName")
        cmd = MigrateVM(name=vmi, namespace=namespace, migration=name, vmim=True)
    elif kind == "VirtualMachineSnapshot":
        reader.section(spec, "spec", fields=_SNAPSHOT_SPEC)
        vm = _vm_reference(spec.get("source"), "spec.source")
        cmd = SnapshotVM(name=vm, namespace=namespace, snapshot=name)
    else:  # VirtualMachineRestore
        reader.section(spec, "spec", fields=_RESTORE_SPEC)
        vm = _vm_reference(spec.get("target"), "spec.target")
        snap = check_name(spec.get("virtualMachineSnapshotName") or "",
                          field="spec.virtualMachineSnapshotName")  # fmt: skip
        cmd = RestoreVM(name=vm, namespace=namespace, snapshot=snap, restore=name)
    return [*made, cmd], reader.warns


def _replicas(spec: dict[str, Any]) -> None:
    if spec.get("replicas") is None:  # `replicas:` left empty is the default, as unset
        spec["replicas"] = 1
    f.integer(spec["replicas"], "spec.replicas", low=0, high=MAX_REPLICAS)


def _pool(
    spec: dict[str, Any], reader: Reader, *, name: str, namespace: str, labels: dict[str, str]
) -> Command:
    """A VirtualMachinePool: `replicas` VMs `<pool>-<index>` made from `virtualMachineTemplate`."""
    for key in [key for key in spec if key not in _POOL_SPEC]:
        reader.warn(f"spec.{key}", "virtbus's pools do not act on it (they scale and update, by "
                                   "their scaleInStrategy and updateStrategy)")  # fmt: skip
    _replicas(spec)
    _strategy(spec.get("scaleInStrategy"), reader, at="spec.scaleInStrategy")
    _strategy(spec.get("updateStrategy"), reader, at="spec.updateStrategy")
    unavailable = spec.get("maxUnavailable")
    if unavailable is not None and not (
            isinstance(unavailable, str) and unavailable.endswith("%")
            and unavailable[:-1].isdigit()):  # fmt: skip
        f.integer(unavailable, "spec.maxUnavailable", low=1, high=2**31 - 1)
    at = "spec.virtualMachineTemplate"
    if not spec.get("virtualMachineTemplate"):
        raise _fail(at, "is required")
    template = reader.section(spec["virtualMachineTemplate"], at, fields=names("metadata spec"))
    meta = reader.section(template.get("metadata"), f"{at}.metadata", fields=METADATA)
    strings(meta.get("labels"), f"{at}.metadata.labels")
    vm = f.mapping(template.get("spec"), f"{at}.spec")
    if not vm:
        raise _fail(f"{at}.spec", "is required")
    reader.section(vm, f"{at}.spec", fields=_VM_SPEC)
    check_matchers(vm, reader, path=f"{at}.spec", inferring=False)
    for one in _data_volume_templates(vm, reader, vm=name, namespace=namespace):
        check_name(f"{one.name}-{_MAX_INDEX}", field=f"{at}.spec.dataVolumeTemplates")
    _check_run_strategy(vm, path=f"{at}.spec")
    reader.template(vm.get("template"), f"{at}.spec.template", sized="instancetype" in vm)
    return ApplyVMPool(name=name, namespace=namespace, spec=spec, labels=labels)


def _strategy(given: Any, reader: Reader, *, at: str) -> None:
    """A pool's `scaleInStrategy` or `updateStrategy`: one of unmanaged, opportunistic,
    proactive (KubeVirt's)."""
    strategy = reader.section(given, at, fields=names("unmanaged opportunistic proactive"))
    if len(strategy) > 1:
        raise _fail(at, "give one of unmanaged, opportunistic and proactive")
    scale_in = at.endswith("scaleInStrategy")
    for kind, given_body in strategy.items():
        fields = ("selectionPolicy" if kind == "proactive" else "") + (
            " statePreservation" if scale_in and kind != "unmanaged" else "")  # fmt: skip
        body = reader.section(given_body, f"{at}.{kind}", fields=names(fields))
        kept = body.get("statePreservation")
        if kept is not None and kept not in STATE_PRESERVATIONS:  # KubeVirt's CRD enum, its words
            shown = f'"{kept[:60]}"' if isinstance(kept, str) else f.short(kept)
            supported = ", ".join(f'"{v}"' for v in STATE_PRESERVATIONS)
            raise _fail(f"{at}.{kind}.statePreservation",
                        f"Unsupported value: {shown}: supported values: {supported}")  # fmt: skip
        if kept == "Online":
            why = "Online keeps the DataVolumes as Offline does, and no memory (as KubeVirt's)"
            reader.warn(f"{at}.{kind}.statePreservation", why)
        policy = reader.section(body.get("selectionPolicy"), f"{at}.{kind}.selectionPolicy",
                                fields=names("sortPolicy selectors"))  # fmt: skip
        f.text(policy.get("sortPolicy"), f"{at}.{kind}.selectionPolicy.sortPolicy",
               choices=SORT_POLICIES)  # fmt: skip
        selectors = reader.section(
            policy.get("selectors"),
            f"{at}.{kind}.selectionPolicy.selectors",
            fields=names("labelSelector nodeSelectorRequirementMatcher"),
        )
        reader.section(
            selectors.get("labelSelector"),
            f"{at}.{kind}.selectionPolicy.selectors.labelSelector",
            fields=names("matchLabels matchExpressions"),
        )
        if policy.get("sortPolicy") == "Random":
            reader.warn(f"{at}.{kind}.selectionPolicy.sortPolicy", "Random is the highest "
                        "indexes first in virtbus (a choice replayed alike)")  # fmt: skip


_MAX_INDEX: Final = 99999  # a pool's DataVolume names take its VMs' indexes: room for them


def pool_vm_spec(vm: dict[str, Any], index: int) -> dict[str, Any]:
    """The spec of a pool's VM number `index`: its `dataVolumeTemplates` named `<dv>-<index>`
    and its volumes pointed at them (KubeVirt's pool controller, indexVMSpec)."""
    spec = copy.deepcopy(vm)
    renamed: dict[str, str] = {}
    for tpl in spec.get("dataVolumeTemplates") or []:
        meta = tpl.setdefault("metadata", {})
        renamed[meta.get("name", "")] = meta["name"] = f"{meta.get('name', '')}-{index}"
    for volume in ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []:
        for source, key in (("dataVolume", "name"), ("persistentVolumeClaim", "claimName")):
            ref = volume.get(source)
            if isinstance(ref, dict) and ref.get(key) in renamed:
                ref[key] = renamed[ref[key]]
    return spec


def data_volume_commands(vm: dict[str, Any], *, name: str, namespace: str) -> list[Command]:
    """The DataVolumes a VM spec's `dataVolumeTemplates` stand for, owned by VM `name` (what the
    controller makes for a VM it creates itself: a pool's)."""
    return _data_volume_templates(vm, Reader(), vm=name, namespace=namespace)


def _data_volume_templates(
    spec: dict[str, Any], reader: Reader, *, vm: str, namespace: str
) -> list[Command]:
    """A VM's `dataVolumeTemplates`: DataVolumes made with it and owned by it (deleted with it)."""
    out: list[Command] = []
    for i, one in enumerate(f.entries(spec.get("dataVolumeTemplates"), "spec.dataVolumeTemplates")):
        at = f"spec.dataVolumeTemplates[{i}]"
        tpl = reader.section(one, at, fields=names("apiVersion kind metadata spec"))
        meta = reader.section(tpl.get("metadata"), f"{at}.metadata", fields=METADATA)
        name = check_name(meta.get("name") or "", field=f"{at}.metadata.name")
        labels = strings(meta.get("labels"), f"{at}.metadata.labels")
        out.append(dv_command(f.mapping(tpl.get("spec"), f"{at}.spec"), reader, name=name,
                              namespace=namespace, owner=vm, path=f"{at}.spec",
                              labels=labels))  # fmt: skip
    return out


# --- checks --------------------------------------------------------------------------------------


def _vm_reference(ref: Any, path: str) -> str:
    """A snapshot's source or a restore's target: virtbus snapshots VirtualMachines only."""
    ref = f.mapping(ref, path)
    if f.text(ref.get("kind"), f"{path}.kind") not in (None, "VirtualMachine"):
        raise _fail(f"{path}.kind", f"{ref.get('kind')!r}: only VirtualMachine can be snapshotted")
    if f.text(ref.get("apiGroup"), f"{path}.apiGroup") not in (None, "kubevirt.io"):
        raise _fail(f"{path}.apiGroup", f"{ref.get('apiGroup')!r}: use kubevirt.io")
    return check_name(ref.get("name") or "", field=f"{path}.name")


def _check_run_strategy(spec: dict[str, Any], *, path: str = "spec") -> None:
    running, strategy = spec.get("running"), spec.get("runStrategy")
    if running is not None and strategy is not None:
        raise _fail(f"{path}.running",
                    f"{path}.running and {path}.runStrategy are mutually exclusive")  # fmt: skip
    f.boolean(running, f"{path}.running")
    f.text(strategy, f"{path}.runStrategy", choices=RUN_STRATEGIES)
