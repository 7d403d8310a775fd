"""Instance types and preferences (instancetype.kubevirt.io/v1beta1): their fold, and a VM's
effective spec with them applied, pure.

Four kinds, four aggregates (`instancetype`, `clusterinstancetype`, `preference`,
`clusterpreference`; the cluster ones under the cluster namespace), one fold. The orchestrator
refuses a start that names a missing one with KubeVirt's words and its controller schedules and
starts the effective spec, so the sizing is the instance type's, never a silent default; the CLI
lists them with the same fold.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from typing import Any, Final

from events import model as m
from events import preferences, unsupported
from events.envelope import Envelope
from events.errors import ValidationError
from events.folding import total
from events.names import CLUSTER
from events.quantity import parse_quantity
from events.spec_objects import SpecObject, decide_object, fold_object

API: Final = "instancetype.kubevirt.io/v1beta1"
# kind -> (aggregate, kubectl's resource name)
KINDS: Final = {
    "VirtualMachineInstancetype": ("instancetype", "virtualmachineinstancetypes"),
    "VirtualMachineClusterInstancetype": ("clusterinstancetype",
                                          "virtualmachineclusterinstancetypes"),
    "VirtualMachinePreference": ("preference", "virtualmachinepreferences"),
    "VirtualMachineClusterPreference": ("clusterpreference", "virtualmachineclusterpreferences"),
}  # fmt: skip
KIND_OF: Final = {aggregate: kind for kind, (aggregate, _) in KINDS.items()}
DEFAULT_KIND: Final = {"instancetype": "VirtualMachineClusterInstancetype",
                       "preference": "VirtualMachineClusterPreference"}  # fmt: skip
# A matcher's kind as KubeVirt's finders read it: case aside, the kind or its resource names.
_SPELLINGS: Final = {spelling: kind for kind, (_, plural) in KINDS.items()
                     for spelling in (kind.lower(), plural)}  # fmt: skip


InstancetypeState = SpecObject  # (events/spec_objects.py)


@total
def apply_instancetype(s: InstancetypeState, env: Envelope) -> InstancetypeState:
    return fold_object(s, env, applied=m.InstancetypeApplied, deleted=m.InstancetypeDeleted)


def decide_instancetype(
    s: InstancetypeState, cmd: Any, *, applied: type[m.Event], deleted: type[m.Event]
) -> list[m.Event]:
    """Apply (created, replaced, or unchanged: no event) or delete one of the four kinds."""
    resource = f"{KINDS[KIND_OF[cmd.aggregate]][1]}.instancetype.kubevirt.io"
    return decide_object(s, cmd, resource=resource, applied=applied, deleted=deleted)


Lookup = Callable[[str, str, str], InstancetypeState | None]  # (aggregate, namespace, name)
REVISION: Final = "controllerrevision"  # the aggregate a Lookup is asked for a revisionName by


def matcher(vm_spec: dict[str, Any], which: str) -> tuple[str, str] | None:
    """The (aggregate, name) the VM spec's `instancetype` or `preference` names, or None."""
    found = vm_spec.get(which)
    if not isinstance(found, dict) or not isinstance(found.get("name"), str):
        return None
    kind = found.get("kind") or DEFAULT_KIND[which]
    aggregate = KINDS.get(_SPELLINGS.get(str(kind).lower(), ""), ("", ""))[0]
    if not aggregate or (which == "instancetype") != aggregate.endswith("instancetype"):
        raise ValidationError(f"spec.{which}.kind: {kind!r} is not a kind of {which}",
                              field=f"spec.{which}.kind")  # fmt: skip
    return aggregate, found["name"]


def find(vm_spec: dict[str, Any], *, namespace: str, lookup: Lookup) -> tuple[
    dict[str, Any] | None, dict[str, Any] | None
]:  # fmt: skip
    """The specs of the VM's instance type and preference (None: it names none), or raise
    KubeVirt's `Failure to find ...` naming the field."""
    out: list[dict[str, Any] | None] = []
    for which in ("instancetype", "preference"):
        matched = matcher(vm_spec, which)
        if matched is None:
            out.append(None)
            continue
        aggregate, name = matched
        ns = CLUSTER if aggregate.startswith("cluster") else namespace
        if revision := vm_spec[which].get("revisionName"):
            out.append(_revision(which, str(revision), namespace=namespace, lookup=lookup))
            continue
        found = lookup(aggregate, ns, name)
        if found is None or not found.exists:
            resource = f"{KINDS[KIND_OF[aggregate]][1]}.instancetype.kubevirt.io"
            raise ValidationError(f'Failure to find {which}: {resource} "{name}" not found',
                                  field=f"spec.{which}")  # fmt: skip
        out.append(found.spec)
    return out[0], out[1]


def _revision(which: str, name: str, *, namespace: str, lookup: Lookup) -> dict[str, Any]:
    """The spec a `revisionName` names (a ControllerRevision: what a VM of the namespace
    captured), as KubeVirt's revision finder reads it, or its refusal."""
    found = lookup(REVISION, namespace, name)
    why = f'controllerrevisions.apps "{name}" not found'
    if found is not None and (which == "instancetype") != found.aggregate.endswith("instancetype"):
        why = f"unexpected type in ControllerRevision: *v1beta1.{KIND_OF[found.aggregate]}"
    elif found is not None:
        return found.spec
    raise ValidationError(f"Failure to find {which}: {why}", field=f"spec.{which}.revisionName")


def effective_spec(vm_spec: dict[str, Any], *, namespace: str, lookup: Lookup) -> dict[str, Any]:
    """The VM spec with its instance type applied (its CPU and memory win; a VM that sets them
    too conflicts) and its preference filling what the VM leaves unset."""
    itype, pref = find(vm_spec, namespace=namespace, lookup=lookup)
    if itype is None and pref is None:
        return vm_spec
    spec = copy.deepcopy(vm_spec)
    template = spec.setdefault("template", {})
    pref = pref or {}
    if itype is not None:
        preferences.check_spread(int((itype.get("cpu") or {}).get("guest") or 1), pref)
        _size(template, itype, pref=pref)
    preferences.apply(pref, template)
    vmi = template.setdefault("spec", {})
    # What the instance type or preference brought (GPUs, EFI, SEV...) is refused as if the VM
    # had it: one applied before virtbus refused it at its own apply cannot slip through.
    unsupported.check(vmi, "spec.template.spec", annotations=None)
    preferences.requirements(itype, pref, vmi)
    return spec


def _conflicts(vmi: dict[str, Any], meta: dict[str, Any], itype: dict[str, Any]) -> list[str]:
    """The VM fields that conflict with the instance type, in KubeVirt's order and spelling
    (its applier's paths: `dedicatedCPUPlacement`, though the VM's field is `...Cpu...`)."""
    base = "spec.template.spec"
    domain = vmi.get("domain") or {}
    cpu, memory = itype.get("cpu") or {}, itype.get("memory") or {}
    mine_cpu, mine_mem = domain.get("cpu") or {}, domain.get("memory") or {}
    resources = domain.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    out = [key for key in ("nodeSelector", "schedulerName") if itype.get(key) and vmi.get(key)]
    out += ["domain.resources.requests.cpu"] if "cpu" in requests else []
    out += ["domain.resources.limits.cpu"] if "cpu" in limits else []
    out += [f"domain.cpu.{key}" for key in ("sockets", "cores", "threads") if mine_cpu.get(key)]
    for theirs, ours in _CPU_FIELDS.items():
        if theirs in cpu and mine_cpu.get(ours) and (theirs != "model" or cpu["model"]):
            out.append(f"domain.cpu.{theirs}")
    memory_conflicts = [
        *(["domain.memory.guest"] if mine_mem.get("guest") is not None else []),
        *[f"domain.memory.{k}" for k in ("hugepages", "maxGuest") if k in memory and k in mine_mem],
        *(["domain.resources.requests.memory"] if "memory" in requests else []),
        *(["domain.resources.limits.memory"] if "memory" in limits else []),
    ]
    out += memory_conflicts[:1]  # KubeVirt's memory applier stops at its first
    pool = (domain.get("ioThreads") or {}).get("supplementalPoolThreadCount")
    if (itype.get("ioThreads") or {}).get("supplementalPoolThreadCount") is not None and (
        pool is not None
    ):
        out.append("domain.ioThreads.supplementalPoolThreadCount")
    for key, path in (("ioThreadsPolicy", "domain.ioThreadsPolicy"),
                      ("launchSecurity", "domain.launchSecurity"),
                      ("gpus", "domain.devices.gpus"),
                      ("hostDevices", "domain.devices.hostDevices")):  # fmt: skip
        where = domain if key in ("ioThreadsPolicy", "launchSecurity") else domain.get("devices")
        if itype.get(key) and (where or {}).get(key):
            out.append(path)
    out = [f"{base}.{path}" for path in out]
    mine_notes = meta.get("annotations") or {}
    out += [f"annotations.{key}" for key, value in (itype.get("annotations") or {}).items()
            if key in mine_notes and mine_notes[key] != value]  # fmt: skip
    return out


# the instance type's cpu field -> the VM's, copied into the VM's CPU as KubeVirt's applier does
_CPU_FIELDS: Final = {"model": "model", "dedicatedCPUPlacement": "dedicatedCpuPlacement",
                      "isolateEmulatorThread": "isolateEmulatorThread", "numa": "numa",
                      "realtime": "realtime"}  # fmt: skip


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def overcommitted(guest: int, percent: int) -> int:
    """The memory request KubeVirt sets below the guest's by `overcommitPercent`, in its float32
    arithmetic (so the bytes are KubeVirt's to the last one)."""
    share = _float32(1 - _float32(_float32(percent) / 100))
    return int(_float32(_float32(guest) * share))


def _size(template: dict[str, Any], itype: dict[str, Any], *, pref: dict[str, Any]) -> None:
    """The instance type applied to the VM template, as KubeVirt's VMI applier does, or its
    conflicts with what the VM sets itself refused in KubeVirt's words."""
    vmi = template.setdefault("spec", {})
    conflicts = _conflicts(vmi, template.get("metadata") or {}, itype)
    if conflicts:
        raise ValidationError(f"VM field(s) {', '.join(conflicts)} conflicts with selected "
                              "instance type", field="spec.instancetype")  # fmt: skip
    domain = vmi.setdefault("domain", {})
    cpu, memory = itype.get("cpu") or {}, itype.get("memory") or {}
    for key in ("nodeSelector", "schedulerName"):
        if itype.get(key):
            vmi[key] = copy.deepcopy(itype[key])
    mine_cpu = domain["cpu"] = dict(domain.get("cpu") or {})
    for theirs, ours in _CPU_FIELDS.items():
        if cpu.get(theirs) is not None and (theirs != "model" or cpu[theirs]):
            mine_cpu[ours] = copy.deepcopy(cpu[theirs])
    if cpu.get("maxSockets"):
        mine_cpu["maxSockets"] = cpu["maxSockets"]
    mine_cpu.update(preferences.layout(int(cpu.get("guest") or 1), pref))
    mine_mem = dict(domain.get("memory") or {})
    if memory.get("guest"):
        mine_mem["guest"] = memory["guest"]
        if percent := int(memory.get("overcommitPercent") or 0):
            resources = domain.setdefault("resources", {})
            requests = resources["requests"] = dict(resources.get("requests") or {})
            guest = parse_quantity(memory["guest"], field="spec.memory.guest")
            requests["memory"] = str(overcommitted(guest, percent))
    for key in ("hugepages", "maxGuest"):
        if memory.get(key) is not None:
            mine_mem[key] = copy.deepcopy(memory[key])
    if mine_mem:
        domain["memory"] = mine_mem
    threads = (itype.get("ioThreads") or {}).get("supplementalPoolThreadCount")
    if threads is not None:
        domain["ioThreads"] = {**(domain.get("ioThreads") or {}),
                               "supplementalPoolThreadCount": threads}  # fmt: skip
    for key in ("ioThreadsPolicy", "launchSecurity"):
        if itype.get(key):
            domain[key] = copy.deepcopy(itype[key])
    for key in ("gpus", "hostDevices"):
        if itype.get(key):
            domain.setdefault("devices", {})[key] = copy.deepcopy(itype[key])
    if itype.get("annotations"):
        meta = template.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **itype["annotations"]}
