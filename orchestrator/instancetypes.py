"""Instance types at placement: the controller schedules and starts a VM's effective spec.

`events.instancetypes` resolves; this adapts it to the controller's folded maps (keyed by
subject prefix) and to the scheduler, so a VM whose instance type vanished before its placement
stays unschedulable with KubeVirt's words instead of running with defaults. Like KubeVirt's
ControllerRevisions (instancetype.kubevirt.io v1beta1, referencePolicy `reference`), the first
sight of a VM naming an instance type or preference captures its spec into the VM's history
(`InstancetypeRevisionCaptured`); the VM is sized by that capture from then on, so a later
change (or deletion) of the object does not alter it, until the VM names another one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from events import model as m
from events.errors import ValidationError
from events.instancetypes import (
    KIND_OF,
    KINDS,
    REVISION,
    InstancetypeState,
    effective_spec,
    matcher,
)
from events.names import CLUSTER
from events.state import TERMINATING, VMState
from events.vmstate import Revision
from orchestrator.decide import changed_paths
from orchestrator.scheduler import Unschedulable

Captured = Mapping[str, Revision]


def _lookup(
    known: Mapping[str, InstancetypeState], captured: Captured | None = None,
    vms: Mapping[str, VMState] | None = None,
) -> Callable[[str, str, str], Any]:  # fmt: skip
    """Find an instance type or preference: the VM's capture of it first, else the object; a
    `revisionName` among the captures of the namespace's VMs (its ControllerRevisions)."""
    held = {(KINDS[r.kind][0], r.name): r for r in (captured or {}).values() if r.kind in KINDS}

    def look(aggregate: str, ns: str, name: str) -> InstancetypeState | None:
        if aggregate == REVISION:
            rev = revision_named(ns, name, captured=captured, vms=vms)
            if rev is None:
                return None
            return InstancetypeState(name=rev.name, aggregate=KINDS[rev.kind][0], exists=True,
                                     spec=rev.spec)  # fmt: skip
        if (rev := held.get((aggregate, name))) is not None:
            return InstancetypeState(name=name, aggregate=aggregate, exists=True, spec=rev.spec)
        return known.get(f"virt.{aggregate}.{ns}.{name}")

    return look


def revision_named(
    ns: str, name: str, *, captured: Captured | None, vms: Mapping[str, VMState] | None
) -> Revision | None:
    """The ControllerRevision `name` of namespace `ns`: one the VM holds, else one an existing
    VM there captured (KubeVirt's are namespaced objects a VM owns, gone with it)."""
    mine = [r for r in (captured or {}).values() if r.revision == name and r.kind in KINDS]
    theirs = (r for vm in (vms or {}).values() if vm.exists and vm.namespace == ns
              for r in vm.revisions.values() if r.revision == name and r.kind in KINDS)  # fmt: skip
    return mine[0] if mine else next(theirs, None)


def admit(
    spec: dict[str, Any], *, namespace: str, known: Mapping[str, InstancetypeState],
    captured: Captured | None = None, vms: Mapping[str, VMState] | None = None,
) -> None:  # fmt: skip
    """Raise the ValidationError KubeVirt gives for a missing or conflicting instance type."""
    effective_spec(spec, namespace=namespace, lookup=_lookup(known, captured, vms))


def captures(
    s: VMState, *, known: Mapping[str, InstancetypeState], vms: Mapping[str, VMState] | None = None
) -> list[m.Event]:
    """The revisions KubeVirt's VM controller would store now: of each instance type or
    preference the VM names that it has not captured (or names anew), if it exists; a
    `revisionName` in the VM's spec is that revision, taken as it is."""
    if not s.exists or s.status == TERMINATING:
        return []
    out: list[m.Event] = []
    for which in ("instancetype", "preference"):
        try:
            matched = matcher(s.spec, which)
        except ValidationError:
            continue  # a wrong kind: the start says so
        if matched is None:
            continue
        aggregate, name = matched
        held = s.revisions.get(which)
        named = str(s.spec[which].get("revisionName") or "")
        if held is not None and (KINDS.get(held.kind, ("",))[0], held.name) == matched and (
                not named or held.revision == named):  # fmt: skip
            continue
        if named:
            rev = revision_named(s.namespace, named, captured=s.revisions, vms=vms)
            if rev is None or (which == "instancetype") != rev.kind.endswith("Instancetype"):
                continue  # a start is refused, naming the revision
            spec, revision = rev.spec, named
        else:
            ns = CLUSTER if aggregate.startswith("cluster") else s.namespace
            found = known.get(f"virt.{aggregate}.{ns}.{name}")
            if found is None or not found.exists:
                continue  # nothing to capture: a start is refused with KubeVirt's words
            spec, revision = found.spec, f"{s.name}-{name}-v1beta1-{found.version}"  # KubeVirt's
        out.append(m.InstancetypeRevisionCaptured(
            which=which, object_kind=KIND_OF[aggregate], name=name, revision=revision,
            spec=spec))  # fmt: skip
    return out


def expansion(
    s: VMState, *, known: Mapping[str, InstancetypeState], vms: Mapping[str, VMState] | None,
    policy: str,
) -> list[m.Event]:  # fmt: skip
    """KubeVirt's `referencePolicy` expand (a VM that has captured nothing) and expandAll (every
    VM): the instance type and preference written into the VM's spec, which names them no more;
    the running instance is that spec already, so nothing is to restart."""
    named = "instancetype" in s.spec or "preference" in s.spec
    if policy not in ("expand", "expandAll") or not (named and s.exists) or s.status == TERMINATING:
        return []
    if policy == "expand" and s.revisions:
        return []  # KubeVirt's: "not expanding as instance type already has revisionName"
    look = _lookup(known, s.revisions, vms)
    try:
        spec = effective_spec(s.spec, namespace=s.namespace, lookup=look)
    except ValidationError:
        return []  # a start says why
    spec = {k: v for k, v in spec.items() if k not in ("instancetype", "preference")}
    return [m.VMSpecChanged(spec=spec, changed=changed_paths(s.spec, spec))]


def effective(
    s: VMState, *, known: Mapping[str, InstancetypeState], vms: Mapping[str, VMState] | None = None
) -> tuple[VMState, Callable[[], str]]:
    """`s` with its effective spec, and a placer guard that raises Unschedulable (with the
    resolution's message) when the spec cannot be resolved, else returns ""."""

    def fine() -> str:
        return ""

    if "instancetype" not in s.spec and "preference" not in s.spec:
        return s, fine
    try:
        spec = effective_spec(
            s.spec, namespace=s.namespace, lookup=_lookup(known, s.revisions, vms)
        )
    except ValidationError as err:
        message = err.message

        def refuse() -> str:
            raise Unschedulable(message, field="spec.instancetype")

        return s, refuse
    return msgspec.structs.replace(s, spec=spec), fine
