"""Fields virtbus recognises but does not implement, in one table: what `apply` says of each.

KubeVirt accepts these and acts on them; virtbus does not, and must say so rather than swallow
them. `warn` where running without the field still gives the VM the user meant (a probe nobody
runs, a priority nobody weighs); `refuse` where it would mislead, as KubeVirt would fail the VMI
(a GPU that is not there, a network that is not attached, firmware that is not what the guest
boots with). Paths are relative to a VMI spec; `[]` walks each entry of a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from events.fields import fail

WARN, REFUSE = "warn", "refuse"
SIDECARS: Final = "hooks.kubevirt.io/hookSidecars"


def _given(value: Any) -> bool:
    """Set: an empty mapping counts (`efi: {}`, `sriov: {}` ask for the default), an empty list
    or a false flag does not (`gpus: []`, `dedicatedCpuPlacement: false`)."""
    return value is not None and value is not False and value not in ([], "")


def _not_amd64(value: Any) -> bool:
    return _given(value) and value != "amd64"


# path -> (action, what virtbus does not do[, when it applies: default "given at all"])
TABLE: Final[dict[str, tuple[str, str] | tuple[str, str, Callable[[Any], bool]]]] = {
    "domain.devices.gpus": (REFUSE, "virtbus passes no GPUs through (its nodes have no device "
                                    "plugins); the VMI would run without the GPU"),
    "domain.devices.hostDevices": (REFUSE, "virtbus passes no host devices through (PCI or "
                                           "mediated)"),
    "resourceClaims": (REFUSE, "virtbus allocates no DRA resource claims"),
    "networks[].multus": (REFUSE, "virtbus attaches no multus networks: a VM has the pod "
                                  "network only"),
    "domain.devices.interfaces[].sriov": (REFUSE, "virtbus does no SR-IOV; use masquerade or "
                                                  "bridge"),
    "domain.firmware.kernelBoot": (REFUSE, "virtbus does not boot a kernel and initrd from a "
                                           "container image"),
    "domain.firmware.bootloader.efi": (REFUSE, "virtbus boots guests with BIOS (SeaBIOS) only: "
                                               "no EFI, no secure boot"),
    "architecture": (REFUSE, "virtbus runs amd64 guests only", _not_amd64),
    "domain.launchSecurity": (REFUSE, "virtbus runs no confidential guests (SEV, TDX, secure "
                                      "execution)"),
    "domain.devices.filesystems": (REFUSE, "virtbus shares no filesystems (virtiofs)"),
    "domain.devices.tpm": (WARN, "virtbus gives the guest no TPM"),
    "domain.cpu.dedicatedCpuPlacement": (WARN, "virtbus pins no CPUs; the vCPUs float"),
    "domain.cpu.isolateEmulatorThread": (WARN, "virtbus pins no CPUs"),
    "domain.cpu.numa": (WARN, "virtbus maps no NUMA topology"),
    "domain.cpu.realtime": (WARN, "virtbus does not tune for realtime"),
    "domain.memory.hugepages": (WARN, "virtbus backs guest memory with ordinary pages"),
    "priorityClassName": (WARN, "virtbus has no pod priorities; ignored"),
    "affinity": (WARN, "virtbus's scheduler does not read affinity; use nodeSelector"),
    "tolerations": (WARN, "virtbus's nodes have no taints; ignored"),
    "topologySpreadConstraints": (WARN, "virtbus's scheduler does not spread by topology"),
    "readinessProbe": (WARN, "virtbus runs no probes; the VMI is ready once it runs"),
    "livenessProbe": (WARN, "virtbus runs no probes; the VMI is never restarted by one"),
    "dnsConfig": (WARN, "virtbus sets no guest DNS configuration"),
    "schedulerName": (WARN, "virtbus has one scheduler; ignored"),
    "domain.devices.sound": (WARN, "virtbus gives the guest no sound device"),
    "domain.devices.downwardMetrics": (WARN, "virtbus exposes no downward metrics"),
    "domain.ioThreadsPolicy": (WARN, "virtbus's domains have no IO threads: QEMU's main loop "
                                     "serves the disks"),
    "domain.ioThreads": (WARN, "virtbus's domains have no IO threads: QEMU's main loop serves "
                               "the disks"),
}  # fmt: skip
# An instance type's fields (instancetype.kubevirt.io/v1beta1) that land on these VMI fields:
# said at the instance type's apply as the VM's own would be, under the instance type's path.
INSTANCETYPE_FIELDS: Final = {
    "gpus": "domain.devices.gpus", "hostDevices": "domain.devices.hostDevices",
    "launchSecurity": "domain.launchSecurity", "schedulerName": "schedulerName",
    "ioThreadsPolicy": "domain.ioThreadsPolicy", "ioThreads": "domain.ioThreads",
    "cpu.dedicatedCPUPlacement": "domain.cpu.dedicatedCpuPlacement",
    "cpu.isolateEmulatorThread": "domain.cpu.isolateEmulatorThread",
    "cpu.numa": "domain.cpu.numa", "cpu.realtime": "domain.cpu.realtime",
    "memory.hugepages": "domain.memory.hugepages",
}  # fmt: skip


# The table split once: (path's parts, action, reason, predicate), for the walk of each apply.
_ROWS: Final = [(where.split("."), row[0], row[1], row[2] if len(row) == 3 else _given)
                for where, row in TABLE.items()]  # fmt: skip


def _walk(value: Any, parts: list[str], path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, value) `parts` reach from `value`."""
    if not parts:
        yield path, value
        return
    if not isinstance(value, dict):
        return
    head, listed = parts[0].removesuffix("[]"), parts[0].endswith("[]")
    found = value.get(head)
    at = f"{path}.{head}" if path else head
    if not listed:
        yield from _walk(found, parts[1:], at)
    elif isinstance(found, list):
        for i, item in enumerate(found):
            yield from _walk(item, parts[1:], f"{at}[{i}]")


def check(vmi: Any, path: str, *, annotations: dict[str, str] | None = None) -> list[str]:
    """Raise for the first field of the VMI spec at `path` that virtbus refuses; the warnings
    (`path: reason`) for those it ignores. `annotations`: the VMI's (sidecar hooks live there)."""
    warns: list[str] = []
    for parts, action, why, applies in _ROWS:
        for at, value in _walk(vmi, parts, path):
            if not applies(value):
                continue
            if action == REFUSE:
                raise fail(at, f"{why}; remove it to run the VM on virtbus")
            warns.append(f"{at}: {why}")
    if annotations and SIDECARS in annotations:
        owner = path.rpartition(".")[0]  # the template's, or a bare VMI's own metadata
        at = (
            f"{owner}.metadata.annotations.{SIDECARS}"
            if owner
            else f"metadata.annotations.{SIDECARS}"
        )
        raise fail(at, "virtbus runs no sidecar hooks; remove it to run the VM on virtbus")
    return warns


def instancetype(spec: dict[str, Any]) -> list[str]:
    """Raise for the first field of an instance type's spec that virtbus refuses in a VM; the
    warnings (`spec.<field>: reason`) for those it ignores there."""
    warns: list[str] = []
    for field, vmi_path in INSTANCETYPE_FIELDS.items():
        section, _, key = field.rpartition(".")
        value = (spec.get(section) or {}).get(key) if section else spec.get(field)
        row = TABLE[vmi_path]
        if not (row[2] if len(row) == 3 else _given)(value):
            continue
        if row[0] == REFUSE:
            raise fail(f"spec.{field}", f"{row[1]}; remove it to run the VM on virtbus")
        warns.append(f"spec.{field}: {row[1]}")
    if SIDECARS in (spec.get("annotations") or {}):
        raise fail(f"spec.annotations.{SIDECARS}", "virtbus runs no sidecar hooks; remove it to "
                                                   "run the VM on virtbus")  # fmt: skip
    return warns


# Kinds of KubeVirt's (and Kubernetes') that its examples and guides apply, which virtbus does
# not serve, by API group: what to use instead, where there is something, rather than a hint
# at another apiVersion that would not help.
OTHER_KINDS: Final = {
    "scheduling.k8s.io": "virtbus has no pod priorities, so no PriorityClass; a VM's "
    "priorityClassName is ignored with a warning",
    "resource.k8s.io": "virtbus has no dynamic resource allocation (DRA): its nodes offer no "
    "devices to claim",
    "export.kubevirt.io": "virtbus has no VirtualMachineExport; `virtbus history` and "
    "`image-upload` are its ways in and out",
    "clone.kubevirt.io": "virtbus has no VirtualMachineClone; a DataVolume with a pvc source "
    "clones a disk",
}
PRESET: Final = (
    "VirtualMachineInstancePreset",
    "KubeVirt deprecated VirtualMachineInstancePresets (kubevirt.io/v1, to be removed in v2) and "
    "virtbus never had them: use instance types and preferences (instancetype.kubevirt.io/v1beta1)",
)


def other_kind(api: str | None, kind: str | None) -> str | None:
    """Why a kind virtbus does not serve is not served, where that is known; None otherwise."""
    if kind == PRESET[0]:
        return PRESET[1]
    group = (api or "").partition("/")[0]
    return OTHER_KINDS.get(group) or None
