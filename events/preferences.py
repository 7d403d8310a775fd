"""A preference (instancetype.kubevirt.io/v1beta1) applied to a VMI spec, pure: KubeVirt's
preference applier, its CPU topology layout and its requirements check.

Split from `events.instancetypes` (which finds the objects and sizes the VM) because KubeVirt's
preference fields are many and each is small: every `preferred*` value fills what the VM leaves
unset (a few overwrite, as KubeVirt's do), so the effective spec the node boots is the one a
KubeVirt user expects. `requirements` refuses a VM below the preference's CPU or memory minimum
with KubeVirt's words.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from events.errors import ValidationError
from events.quantity import guest_memory_source, parse_quantity

# KubeVirt's topologies (and their deprecated `prefer*` spellings) -> where the vCPUs go.
_PLACE: Final = {"sockets": "sockets", "preferSockets": "sockets", "cores": "cores",
                 "preferCores": "cores", "threads": "threads", "preferThreads": "threads",
                 "any": "any", "preferAny": "any", "spread": "spread",
                 "preferSpread": "spread"}  # fmt: skip
_ACROSS: Final = {"SocketsCores": ("sockets", "cores"), "CoresThreads": ("cores", "threads"),
                  "SocketsCoresThreads": ("sockets", "cores", "threads")}  # fmt: skip
_THREADS_PER_CORE: Final = 2  # KubeVirt's, spreading across sockets, cores and threads
_AUTOATTACH: Final = ("GraphicsDevice", "MemBalloon", "PodInterface", "SerialConsole",
                      "InputDevice")  # fmt: skip
# preference devices key -> the VMI devices key it fills when unset (scalars and objects alike)
_DEVICE_FILL: Final = {"preferredUseVirtioTransitional": "useVirtioTransitional",
                       "preferredBlockMultiQueue": "blockMultiQueue",
                       "preferredNetworkInterfaceMultiQueue": "networkInterfaceMultiQueue",
                       "preferredRng": "rng", "preferredTPM": "tpm"}  # fmt: skip
_DISK_FILL: Final = {"preferredDiskBlockSize": "blockSize", "preferredDiskCache": "cache",
                     "preferredDiskIO": "io"}  # fmt: skip
_FEATURES: Final = {"preferredApic": "apic", "preferredKvm": "kvm",
                    "preferredPvspinlock": "pvspinlock", "preferredSmm": "smm"}  # fmt: skip


def _topology(pref: dict[str, Any]) -> str:
    return _PLACE.get(str((pref.get("cpu") or {}).get("preferredCPUTopology") or ""), "sockets")


def _spread(pref: dict[str, Any]) -> tuple[int, str]:
    """KubeVirt's spread options: (ratio, across), defaults 2 and SocketsCores."""
    options = (pref.get("cpu") or {}).get("spreadOptions") or {}
    ratio = options.get("ratio") or pref.get("preferSpreadSocketToCoreRatio") or 2
    return int(ratio), str(options.get("across") or "SocketsCores")


def layout(guest: int, pref: dict[str, Any]) -> dict[str, int]:
    """`guest` vCPUs laid out by the preference's `preferredCPUTopology` (sockets by default)."""
    shape = {"sockets": 1, "cores": 1, "threads": 1}
    if guest == 1:
        return shape
    place = _topology(pref)
    if place == "spread":
        ratio, across = _spread(pref)
        if across == "CoresThreads":
            return {"sockets": 1, "cores": guest // ratio, "threads": ratio}
        if across == "SocketsCoresThreads":
            per = _THREADS_PER_CORE
            return {"sockets": guest // per // ratio, "cores": ratio, "threads": per}
        return {"sockets": guest // ratio, "cores": ratio, "threads": 1}
    shape["sockets" if place == "any" else place] = guest
    return shape


def check_spread(guest: int, pref: dict[str, Any]) -> None:
    """KubeVirt's refusal of an instance type's vCPUs that the preference's spread cannot
    divide."""
    if _topology(pref) != "spread":
        return
    ratio, across = _spread(pref)
    lead = f"{guest} vCPUs provided by the instance type are not divisible by the"
    ratio_of = ("Spec.PreferSpreadSocketToCoreRatio or Spec.CPU.PreferSpreadOptions.Ratio of "
                f"{ratio} provided by the preference")  # fmt: skip
    message = ""
    if across == "SocketsCores" and guest % ratio:
        message = f"{lead} {ratio_of}"
    elif across == "CoresThreads" and guest % ratio:
        message = f"{lead} number of threads per core {ratio}"
    elif across == "SocketsCoresThreads" and (guest % _THREADS_PER_CORE or
                                              (guest // _THREADS_PER_CORE) % ratio):  # fmt: skip
        message = (f"{lead} number of threads per core {_THREADS_PER_CORE} and "
                   f"{ratio_of.removesuffix(' provided by the preference')}")  # fmt: skip
    if message:
        raise ValidationError(message, field="instancetype.spec.cpu.guest")


def _fill(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "" and target.get(key) is None:
        target[key] = copy.deepcopy(value)


def _devices(wanted: dict[str, Any], vmi: dict[str, Any], devices: dict[str, Any]) -> None:
    for key, into in _DEVICE_FILL.items():
        _fill(devices, into, wanted.get(key))
    for name in _AUTOATTACH:
        _fill(devices, f"autoattach{name}", wanted.get(f"preferredAutoattach{name}"))
    if wanted.get("preferredDisableHotplug") is not None:  # KubeVirt overwrites this one
        devices["disableHotplug"] = wanted["preferredDisableHotplug"]
    if wanted.get("preferredSoundModel") and isinstance(devices.get("sound"), dict):
        _fill(devices["sound"], "model", wanted["preferredSoundModel"])
    if wanted.get("preferredVideoType"):
        _fill(devices.setdefault("video", {}), "type", wanted["preferredVideoType"])
    for disk in devices.get("disks") or []:
        if not set(disk) & {"disk", "cdrom", "lun"}:
            disk["disk"] = {}  # KubeVirt's default target, so preferences apply to it
        if "disk" in disk:
            _fill(disk["disk"], "bus", wanted.get("preferredDiskBus"))
            for key, into in _DISK_FILL.items():
                _fill(disk, into, wanted.get(key))
            if disk["disk"].get("bus") == "virtio":
                _fill(disk, "dedicatedIOThread", wanted.get("preferredDiskDedicatedIoThread"))
        elif "cdrom" in disk:
            _fill(disk["cdrom"], "bus", wanted.get("preferredCdromBus"))
        else:
            _fill(disk["lun"], "bus", wanted.get("preferredLunBus"))
    pod = {n.get("name") for n in vmi.get("networks") or [] if "pod" in n}
    bindings = {"bridge", "masquerade", "sriov", "slirp", "macvtap", "passt", "binding"}
    for nic in devices.get("interfaces") or []:
        _fill(nic, "model", wanted.get("preferredInterfaceModel"))
        masquerade = wanted.get("preferredInterfaceMasquerade")
        if masquerade is not None and not set(nic) & bindings and nic.get("name") in pod:
            nic["masquerade"] = copy.deepcopy(masquerade)
    for device in devices.get("inputs") or []:
        _fill(device, "bus", wanted.get("preferredInputBus"))
        _fill(device, "type", wanted.get("preferredInputType"))
    if (model := wanted.get("preferredPanicDeviceModel")) is not None:
        panics = devices.setdefault("panicDevices", [])
        for device in panics:
            _fill(device, "model", model)
        if not panics:
            panics.append({"model": model})


def _firmware(wanted: dict[str, Any], domain: dict[str, Any]) -> None:
    loader = domain.setdefault("firmware", {}).setdefault("bootloader", {})
    if wanted.get("preferredUseBios") is True and not set(loader) & {"bios", "efi"}:
        loader["bios"] = {}
    if isinstance(loader.get("bios"), dict):
        _fill(loader["bios"], "useSerial", wanted.get("preferredUseBiosSerial"))
    if not set(loader) & {"bios", "efi"} and wanted.get("preferredEfi") is not None:
        loader["efi"] = copy.deepcopy(wanted["preferredEfi"])
        return
    if wanted.get("preferredUseEfi") is True and not set(loader) & {"bios", "efi"}:
        loader["efi"] = {}
    if isinstance(loader.get("efi"), dict):
        _fill(loader["efi"], "secureBoot", wanted.get("preferredUseSecureBoot"))


def _features(wanted: dict[str, Any], domain: dict[str, Any]) -> None:
    features = domain.setdefault("features", {})
    if wanted.get("preferredAcpi") is not None:  # KubeVirt overwrites ACPI
        features["acpi"] = copy.deepcopy(wanted["preferredAcpi"])
    for key, into in _FEATURES.items():
        _fill(features, into, wanted.get(key))
    if isinstance(wanted.get("preferredHyperv"), dict):
        hyperv = features.setdefault("hyperv", {})
        for key, value in wanted["preferredHyperv"].items():
            _fill(hyperv, key, value)


def apply(pref: dict[str, Any], template: dict[str, Any]) -> None:
    """Fill the VM template (`spec.template`, changed in place) from the preference, as
    KubeVirt's preference applier does."""
    vmi = template.setdefault("spec", {})
    domain = vmi.setdefault("domain", {})
    features = (pref.get("cpu") or {}).get("preferredCPUFeatures") or []
    if features:
        mine = domain.setdefault("cpu", {}).setdefault("features", [])
        named = {f.get("name") for f in mine}
        mine.extend(copy.deepcopy(f) for f in features if f.get("name") not in named)
    if pref.get("devices"):
        _devices(pref["devices"], vmi, domain.setdefault("devices", {}))
    if pref.get("features"):
        _features(pref["features"], domain)
    if pref.get("firmware"):
        _firmware(pref["firmware"], domain)
    machine = (pref.get("machine") or {}).get("preferredMachineType")
    if machine and not (domain.get("machine") or {}).get("type"):  # "" is no type, as unset
        domain.setdefault("machine", {})["type"] = machine
    clock = pref.get("clock") or {}
    if clock:
        mine_clock = domain.setdefault("clock", {})
        offset = clock.get("preferredClockOffset")
        if offset and not set(mine_clock) & {"utc", "timezone"}:
            mine_clock.update(copy.deepcopy(offset))
        _fill(mine_clock, "timer", clock.get("preferredTimer"))
    _fill(vmi, "subdomain", pref.get("preferredSubdomain") or None)
    _fill(vmi, "terminationGracePeriodSeconds", pref.get("preferredTerminationGracePeriodSeconds"))
    _fill(vmi, "architecture", pref.get("preferredArchitecture") or None)
    _fill(domain, "launchSecurity", pref.get("preferredLaunchSecurity"))
    if pref.get("annotations"):
        annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
        for key, value in pref["annotations"].items():
            annotations.setdefault(key, value)


def requirements(itype: dict[str, Any] | None, pref: dict[str, Any],
                 vmi: dict[str, Any]) -> None:  # fmt: skip
    """Refuse, with KubeVirt's message, a VM (or its instance type) below the preference's
    `requirements` (its CPU and memory minimums; `vmi` is the effective VMI spec)."""
    needs = pref.get("requirements") or {}
    cpu_need = int((needs.get("cpu") or {}).get("guest") or 0)
    mem_need = (needs.get("memory") or {}).get("guest")
    problem, field = "", ""
    if cpu_need and itype is not None:
        given = int((itype.get("cpu") or {}).get("guest") or 0)
        if given < cpu_need:
            problem, field = (
                (
                    f"insufficient CPU resources of {given} vCPU provided by instance "
                    f"type, preference requires {cpu_need} vCPU"
                ),
                "spec.instancetype",
            )
    elif cpu_need:
        problem, field = _vm_cpu(cpu_need, pref, vmi.get("domain") or {})
    if not problem and mem_need is not None:
        source = guest_memory_source(vmi.get("domain") or {})
        given_mem = source[1] if source else (
            (itype.get("memory") or {}).get("guest") if itype else "0")  # fmt: skip
        if parse_quantity(given_mem) < parse_quantity(mem_need, field="requirements.memory.guest"):
            by = "instance type" if itype is not None else "VirtualMachine"
            problem = (f"insufficient Memory resources of {given_mem} provided by {by}, "
                       f"preference requires {mem_need}")  # fmt: skip
            field = "spec.instancetype" if itype else "spec.template.spec.domain.memory"
    if problem:
        raise ValidationError(f"failure checking preference requirements: {problem}",
                              field=field)  # fmt: skip


def _vm_cpu(need: int, pref: dict[str, Any], domain: dict[str, Any]) -> tuple[str, str]:
    base = "spec.template.spec.domain.cpu"
    cpu = domain.get("cpu")
    if not isinstance(cpu, dict):
        return f"no CPU resources provided by VirtualMachine, preference requires {need} vCPU", base
    n = {k: int(cpu.get(k) or 0) for k in ("sockets", "cores", "threads")}
    if not any(n.values()):  # KubeVirt's defaults: one socket, one core, one thread
        n = {"sockets": 1, "cores": 1, "threads": 1}
    place = _topology(pref)
    parts: tuple[str, ...]
    if place in ("sockets", "cores", "threads"):
        parts, given, said = (place,), n[place], place
    else:
        parts = _ACROSS.get(_spread(pref)[1], ()) if place == "spread" else (
            "cores", "sockets", "threads")  # fmt: skip
        given = 1
        for part in parts:
            given *= n[part]
        said = _spread(pref)[1] if place == "spread" else "cores, sockets and threads"
    if given >= need:
        return "", ""
    return (
        f"insufficient CPU resources of {given} vCPU provided by VirtualMachine, preference "
        f"requires {need} vCPU provided as {said}"
    ), ", ".join(f"{base}.{p}" for p in parts)
