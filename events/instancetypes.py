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
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from events import model as m
from events import preferences, unsupported
from events.envelope import Envelope
from events.errors import ValidationError
from events.folding import Skipped, total
from events.names import CLUSTER

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
# A VM's matcher names its kind in any case, singular or plural, as KubeVirt reads it (virtctl's
# `create vm` writes `virtualmachinepreference`).
MATCHED: Final = {
    **{kind.lower(): aggregate for kind, (aggregate, _) in KINDS.items()},
    **{plural: aggregate for aggregate, plural in KINDS.values()},
}


class InstancetypeState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    namespace: str = ""
    name: str = ""
    aggregate: str = ""
    version: int = 0
    exists: bool = False
    created: datetime | None = None
    spec: dict[str, Any] = {}
    labels: dict[str, str] = {}
    skipped: tuple[Skipped, ...] = ()


@total
def apply_instancetype(s: InstancetypeState, env: Envelope) -> InstancetypeState:
    e = env.data
    s = replace(s, version=env.version)
    match e:
        case m.InstancetypeApplied():
            parts = env.subject.split("/")  # `kind/name` for the cluster-scoped kinds
            ns, name = (parts[1], parts[2]) if len(parts) == 3 else (CLUSTER, parts[-1])
            created = s.created if s.exists else env.time
            return InstancetypeState(
                namespace=ns, name=name, aggregate=e.aggregate, version=env.version, exists=True,
                created=created, spec=e.spec, labels=e.labels,
            )  # fmt: skip
        case m.InstancetypeDeleted():
            return replace(s, exists=False)
    return s


def decide_instancetype(
    s: InstancetypeState, cmd: Any, *, applied: type[m.Event], deleted: type[m.Event]
) -> list[m.Event]:
    """Apply (created, replaced, or unchanged: no event) or delete one of the four kinds."""
    resource = f"{KINDS[KIND_OF[cmd.aggregate]][1]}.instancetype.kubevirt.io"
    if hasattr(cmd, "spec"):
        if s.exists and cmd.create_only:
            raise ValidationError(f'{resource} "{cmd.name}" already exists', field="name")
        if s.exists and (s.spec, s.labels) == (cmd.spec, cmd.labels):
            return []
        return [applied(spec=cmd.spec, labels=cmd.labels)]
    if not s.exists:
        raise ValidationError(f'{resource} "{cmd.name}" not found', field="name")
    return [deleted()]


Lookup = Callable[[str, str, str], InstancetypeState | None]  # (aggregate, namespace, name)
REVISION: Final = "controllerrevision"  # the aggregate a Lookup is asked for a revisionName by


def matcher(vm_spec: dict[str, Any], which: str) -> tuple[str, str] | None:
    """The (aggregate, name) the VM spec's `instancetype` or `preference` names, or None."""
    found = vm_spec.get(which)
    if not isinstance(found, dict) or not isinstance(found.get("name"), str):
        return None
    kind = found.get("kind") or DEFAULT_KIND[which]
    aggregate = MATCHED.get(str(kind).lower(), "")
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
    vmi = template.setdefault("spec", {})
    domain = vmi.setdefault("domain", {})
    pref = pref or {}
    if itype is not None:
        preferences.check_spread(int((itype.get("cpu") or {}).get("guest") or 1), pref)
        _size(vmi, domain, itype, pref=pref)
    preferences.apply(pref, template)
    if pref:  # what the preference brought (EFI, SEV...) is refused as if the VM had it
        unsupported.check(vmi, "spec.template.spec", annotations=None)
    preferences.requirements(itype, pref, vmi)
    return spec


def _size(vmi: dict[str, Any], domain: dict[str, Any], itype: dict[str, Any], *,
          pref: dict[str, Any]) -> None:  # fmt: skip
    cpu, memory = itype.get("cpu") or {}, itype.get("memory") or {}
    mine_cpu, mine_mem = domain.get("cpu") or {}, domain.get("memory") or {}
    base = "spec.template.spec.domain"
    conflicts = [f"{base}.cpu.{k}" for k in ("sockets", "cores", "threads") if k in mine_cpu]
    conflicts += [f"{base}.memory.guest"] if "guest" in mine_mem and memory.get("guest") else []
    requests = (domain.get("resources") or {}).get("requests") or {}
    conflicts += [f"{base}.resources.requests.{k}" for k in ("cpu", "memory") if k in requests]
    if conflicts:
        raise ValidationError(f"VM field(s) {', '.join(conflicts)} conflicts with selected "
                              "instance type", field="spec.instancetype")  # fmt: skip
    shape = preferences.layout(int(cpu.get("guest") or 1), pref)
    domain["cpu"] = {**mine_cpu, **shape, **({"model": cpu["model"]} if cpu.get("model") else {})}
    if memory.get("guest"):
        domain["memory"] = {**mine_mem, "guest": memory["guest"]}
    if itype.get("nodeSelector"):
        vmi["nodeSelector"] = {**(vmi.get("nodeSelector") or {}), **itype["nodeSelector"]}
