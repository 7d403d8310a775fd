"""Instance-type manifests in: the four instancetype.kubevirt.io kinds as commands, and a VM's
`instancetype`/`preference` matchers checked as KubeVirt's VM mutator checks them.

Split from `manifest.py` to keep it readable. An instance type's every field is read here: what
virtbus applies to the VM is checked, and what it does not do in a VM is warned about or refused
at the instance type's own apply, under its own path, as the VM's field would be; so no field of
an instance type is dropped silently.
"""

from __future__ import annotations

from typing import Any, Final

from events import fields as f
from events import unsupported
from events.commands import (
    ApplyClusterInstancetype,
    ApplyClusterPreference,
    ApplyInstancetype,
    ApplyPreference,
    Command,
)
from events.fields import fail as _fail
from events.manifest_reader import Reader, names, strings
from events.quantity import parse_quantity

FAILURE_POLICIES: Final = ("Reject", "Ignore")  # inferFromVolumeFailurePolicy, KubeVirt's
_MATCHER: Final = names("name kind revisionName inferFromVolume inferFromVolumeFailurePolicy")


_SIZING: Final = names(
    "cpu memory gpus hostDevices ioThreadsPolicy ioThreads launchSecurity annotations "
    "nodeSelector schedulerName"
)
_SIZING_CPU: Final = names(
    "guest model dedicatedCPUPlacement numa isolateEmulatorThread realtime maxSockets"
)
_SIZING_MEMORY: Final = names("guest hugepages overcommitPercent maxGuest")
IO_THREADS_POLICIES: Final = ("shared", "auto", "supplementalPool")
_PREFERRING: Final = names(
    "cpu devices machine firmware clock features requirements preferredSubdomain "
    "preferredTerminationGracePeriodSeconds volumes annotations preferSpreadSocketToCoreRatio "
    "preferredArchitecture"
)
_APPLY_KIND: Final = {
    "VirtualMachineInstancetype": ApplyInstancetype,
    "VirtualMachineClusterInstancetype": ApplyClusterInstancetype,
    "VirtualMachinePreference": ApplyPreference,
    "VirtualMachineClusterPreference": ApplyClusterPreference,
}


def instancetype_command(
    kind: str, spec: dict[str, Any], reader: Reader, *, name: str, namespace: str,
    labels: dict[str, str],
) -> Command:  # fmt: skip
    """One of the four instancetype.kubevirt.io kinds; an instance type must size CPU and memory
    (KubeVirt's CRD requires both guests)."""
    if kind.endswith("Instancetype"):
        _sizing(spec, reader)
    else:
        reader.section(spec, "spec", fields=_PREFERRING)
    return _APPLY_KIND[kind](name=name, namespace=namespace, spec=spec, labels=labels)


def _sizing(spec: dict[str, Any], reader: Reader) -> None:
    """An instance type's spec: what virtbus applies checked, what it does not do in a VM said
    here as it is of a VM's own field (warned, or refused), so nothing is dropped silently."""
    reader.section(spec, "spec", fields=_SIZING)
    cpu = reader.section(spec.get("cpu"), "spec.cpu", fields=_SIZING_CPU)
    memory = reader.section(spec.get("memory"), "spec.memory", fields=_SIZING_MEMORY)
    for key, section in (("cpu", cpu), ("memory", memory)):
        if section.get("guest") is None:
            raise _fail(f"spec.{key}.guest", "Required value")
    guest = f.integer(cpu["guest"], "spec.cpu.guest", low=1, high=4096) or 1
    f.word(cpu.get("model"), "spec.cpu.model")
    f.integer(cpu.get("maxSockets"), "spec.cpu.maxSockets", low=guest, high=4096)
    for key in ("dedicatedCPUPlacement", "isolateEmulatorThread"):
        f.boolean(cpu.get(key), f"spec.cpu.{key}")
    size = parse_quantity(memory["guest"], field="spec.memory.guest")
    if (
        memory.get("maxGuest") is not None
        and parse_quantity(memory["maxGuest"], field="spec.memory.maxGuest") < size
    ):
        raise _fail("spec.memory.maxGuest", "must be at least spec.memory.guest")
    f.integer(memory.get("overcommitPercent"), "spec.memory.overcommitPercent", low=0, high=100)
    strings(spec.get("nodeSelector"), "spec.nodeSelector")
    strings(spec.get("annotations"), "spec.annotations")
    f.text(spec.get("schedulerName"), "spec.schedulerName")
    f.text(spec.get("ioThreadsPolicy"), "spec.ioThreadsPolicy", choices=IO_THREADS_POLICIES)
    reader.warns += [f"warning: {w}" for w in unsupported.instancetype(spec)]


def check_matchers(spec: dict[str, Any], reader: Reader, *, path: str = "spec",
                   inferring: bool = True) -> None:  # fmt: skip
    """A VM's `instancetype` and `preference`: a name or a volume to infer it from (KubeVirt's
    words for each wrong combination); `inferring` False where virtbus cannot infer (a pool)."""
    for which in ("instancetype", "preference"):
        if spec.get(which) is None:
            continue
        at = f"{path}.{which}"
        matcher = reader.section(spec[which], at, fields=_MATCHER)
        name = f.text(matcher.get("name"), f"{at}.name")
        volume = f.text(matcher.get("inferFromVolume"), f"{at}.inferFromVolume")
        f.text(matcher.get("kind"), f"{at}.kind")
        f.text(matcher.get("revisionName"), f"{at}.revisionName")
        if not name and not volume:
            raise _fail(at, f"Either Name or InferFromVolume should be provided within the {which} "
                            "matcher")  # fmt: skip
        for key in ("name", "kind") if volume else ():
            if matcher.get(key):
                why = f"should not be provided when InferFromVolume is used within the {which}"
                raise _fail(f"{at}.{key}", f"{key.title()} {why} matcher")
        policy = matcher.get("inferFromVolumeFailurePolicy")
        if policy is not None and policy not in FAILURE_POLICIES:
            raise _fail(
                f"{at}.inferFromVolumeFailurePolicy",
                f"Invalid value '{policy if isinstance(policy, str) else f.short(policy)}' "
                "for InferFromVolumeFailurePolicy",
            )
        if volume and not inferring:
            raise _fail(f"{at}.inferFromVolume", "virtbus's pools infer no instance type or "
                                                 "preference from a volume; name one")  # fmt: skip
