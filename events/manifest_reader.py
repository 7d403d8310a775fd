"""The walk through a KubeVirt VMI template: what `events.manifest` checks below `spec`.

Split from `manifest.py` to keep each module readable. Every value is read through the typed
accessors of `events.fields`, so whatever type a field has, a wrong one is a `ValidationError`
naming its path (issue 12: a list as a NIC model used to kill the orchestrator with a TypeError).
"""

from __future__ import annotations

from typing import Any, Final

from events import unsupported
from events.fields import boolean, entries, fail, integer, join, mapping, short, text, word
from events.quantity import MAX_GUEST_MEMORY, parse_quantity


def names(words: str) -> frozenset[str]:
    """A set of field names written as one space-separated string, to keep the tables short."""
    return frozenset(words.split())


VOLUME_SOURCES: Final = names(
    "containerDisk persistentVolumeClaim hostDisk cloudInitNoCloud emptyDisk dataVolume "
    "ephemeral cloudInitConfigDrive configMap secret serviceAccount downwardAPI "
    "downwardMetrics memoryDump sysprep"
)
DISK_TYPES: Final = ("disk", "cdrom", "lun")
BUSES: Final = ("virtio", "sata", "scsi", "usb")
BINDINGS: Final = ("masquerade", "bridge", "sriov", "slirp", "passt")
NIC_MODELS: Final = names("e1000 virtio e1000e rtl8139 pcnet ne2k_pci")
HOST_DISK_TYPES: Final = ("Disk", "DiskOrCreate")
CACHE_MODES: Final = ("none", "writethrough", "writeback")
MAX_VCPUS: Final = 4096  # what QEMU's q35 machine can address; libvirt refuses more
MAX_BOOT_ORDER: Final = 2**31 - 1  # libvirt reads boot order as a C int
MAX_GRACE_S: Final = 86_400  # events.commands.GracePeriod
METADATA: Final = names(
    "name namespace labels annotations generateName uid resourceVersion generation "
    "creationTimestamp deletionTimestamp finalizers ownerReferences managedFields"
)
_TEMPLATE: Final = names("metadata spec")
_VMI_SPEC: Final = names(
    "domain volumes networks nodeSelector affinity tolerations terminationGracePeriodSeconds "
    "hostname subdomain readinessProbe livenessProbe accessCredentials evictionStrategy "
    "schedulerName priorityClassName dnsPolicy dnsConfig startStrategy "
    "topologySpreadConstraints architecture resourceClaims"
)
_DOMAIN: Final = names(
    "cpu memory resources devices machine firmware clock features chassis ioThreadsPolicy "
    "ioThreads launchSecurity"
)
_DEVICES: Final = names(
    "disks interfaces inputs rng gpus hostDevices filesystems watchdog sound tpm "
    "clientPassthrough autoattachGraphicsDevice autoattachSerialConsole autoattachMemBalloon "
    "autoattachPodInterface autoattachInputDevice autoattachVSOCK networkInterfaceMultiqueue "
    "blockMultiQueue disableHotplug useVirtioTransitional logSerialConsole downwardMetrics "
    "video panicDevices"
)
_DISK: Final = names(
    "name bootOrder serial dedicatedIOThread cache io tag blockSize shareable errorPolicy"
) | frozenset(DISK_TYPES)
_DISK_TARGET: Final = names("bus readonly pciAddress tray reservation")
_INTERFACE: Final = names(
    "name binding model macAddress ports pciAddress bootOrder dhcpOptions tag acpiIndex state"
) | frozenset(BINDINGS)
_NETWORK: Final = names("name pod multus")
_CPU: Final = names(
    "cores sockets threads model features dedicatedCpuPlacement isolateEmulatorThread numa "
    "realtime maxSockets"
)
_MEMORY: Final = names("guest hugepages maxGuest")
_RESOURCES: Final = names("requests limits overcommitGuestOverhead")
_HOST_DISK: Final = names("path type capacity shared")
# The sources virtbus runs, and the string field each one cannot do without.
_SOURCE_KEY: Final = {"containerDisk": "image", "persistentVolumeClaim": "claimName"}


def strings(value: Any, path: str) -> dict[str, str]:
    """Labels, annotations, a node selector: strings to strings."""
    found = mapping(value, path)
    for key, item in found.items():
        if not isinstance(item, str):
            raise fail(f"{path}.{key}", f"{short(item)} must be a string (quote it in YAML)")
    return dict(found)


def _named(obj: dict[str, Any], path: str, *, seen: set[str]) -> str:
    """The entry's name, which must be new to `seen`; it is added there."""
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"{path}.name", "a name is required")
    if name in seen:
        raise fail(f"{path}.name", f"{short(name)} is used twice")
    seen.add(name)
    return name


class Reader:
    """Walks one manifest, raising on what KubeVirt would reject and collecting warnings."""

    def __init__(self) -> None:
        self.warns: list[str] = []
        self._boot: dict[int, str] = {}  # boot order -> the device that has it

    def warn(self, path: str, reason: str) -> None:
        self.warns.append(f"warning: {path}: {reason}")

    def section(self, value: Any, path: str, *, fields: frozenset[str]) -> dict[str, Any]:
        found = mapping(value, path)
        for key in [key for key in found if key not in fields]:  # in document order
            self.warn(join(path, key), "unknown field, ignored by virtbus")
        return found

    def entries(self, value: Any, path: str, *, fields: frozenset[str]) -> list[dict[str, Any]]:
        return [
            self.section(v, f"{path}[{i}]", fields=fields)
            for i, v in enumerate(entries(value, path))
        ]

    def template(self, value: Any, path: str, *, sized: bool) -> None:
        if value is None:
            raise fail(path, "is required")
        template = self.section(value, path, fields=_TEMPLATE)
        meta = self.section(template.get("metadata"), f"{path}.metadata", fields=METADATA)
        strings(meta.get("labels"), f"{path}.metadata.labels")
        annotations = strings(meta.get("annotations"), f"{path}.metadata.annotations")
        if template.get("spec") is None:
            raise fail(f"{path}.spec", "is required")
        self.vmi_spec(template["spec"], f"{path}.spec", sized=sized, annotations=annotations)

    def vmi_spec(
        self, value: Any, path: str, *, sized: bool, annotations: dict[str, str] | None = None
    ) -> None:
        """`sized` means an instancetype supplies CPU and memory, so the domain need not;
        `annotations` are the VMI's (a sidecar hook is named there)."""
        spec = self.section(value, path, fields=_VMI_SPEC)
        if spec.get("domain") is None:
            raise fail(f"{path}.domain", "is required")
        # The controller reads these when it schedules and stops the VM.
        strings(spec.get("nodeSelector"), f"{path}.nodeSelector")
        grace = f"{path}.terminationGracePeriodSeconds"
        integer(spec.get("terminationGracePeriodSeconds"), grace, low=0, high=MAX_GRACE_S)
        domain = self.section(spec["domain"], f"{path}.domain", fields=_DOMAIN)
        self.resources(domain, f"{path}.domain", sized=sized)
        self.machine(domain, f"{path}.domain")
        devices = self.section(domain.get("devices"), f"{path}.domain.devices", fields=_DEVICES)
        for key in [key for key in devices if key.startswith("autoattach")]:
            boolean(devices[key], f"{path}.domain.devices.{key}")
        video = mapping(devices.get("video"), f"{path}.domain.devices.video")
        word(video.get("type"), f"{path}.domain.devices.video.type")
        volumes = self.volumes(spec.get("volumes"), f"{path}.volumes")
        disks = f"{path}.domain.devices.disks"
        seen: set[str] = set()
        for i, disk in enumerate(self.entries(devices.get("disks"), disks, fields=_DISK)):
            if (name := _named(disk, at := f"{disks}[{i}]", seen=seen)) not in volumes:
                raise fail(f"{at}.name", f"no volume named {name!r} in {path}.volumes")
            self.disk(disk, at)
        networks: set[str] = set()
        nets = f"{path}.networks"
        for i, net in enumerate(self.entries(spec.get("networks"), nets, fields=_NETWORK)):
            _named(net, f"{nets}[{i}]", seen=networks)
            if sum(key in net for key in ("pod", "multus")) != 1:
                raise fail(f"{nets}[{i}]", "needs exactly one of pod or multus")
        nics = f"{path}.domain.devices.interfaces"
        seen = set()
        for i, nic in enumerate(self.entries(devices.get("interfaces"), nics, fields=_INTERFACE)):
            if (name := _named(nic, at := f"{nics}[{i}]", seen=seen)) not in networks:
                raise fail(f"{at}.name", f"no network named {name!r} in {nets}")
            if sum(key in nic for key in (*BINDINGS, "binding")) > 1:
                raise fail(at, f"has more than one binding of {', '.join(BINDINGS)}")
            model = word(nic.get("model"), f"{at}.model")
            if model is not None and model not in NIC_MODELS:
                self.warn(f"{at}.model", f"unknown NIC model {short(model)}")
            text(nic.get("macAddress"), f"{at}.macAddress")
            self.boot_order(nic, at)
        # What virtbus recognises and does not do: said (warned, or refused), not swallowed.
        self.warns += [
            f"warning: {w}" for w in unsupported.check(spec, path, annotations=annotations)
        ]

    def machine(self, domain: dict[str, Any], path: str) -> None:
        machine = mapping(domain.get("machine"), f"{path}.machine").get("type")
        if machine != "":  # KubeVirt's empty type (its user guide writes one) is the default
            word(machine, f"{path}.machine.type")
        firmware = mapping(domain.get("firmware"), at := f"{path}.firmware")
        bios = mapping(mapping(firmware.get("bootloader"), f"{at}.bootloader").get("bios"),
                       at := f"{at}.bootloader.bios")  # fmt: skip
        boolean(bios.get("useSerial"), f"{at}.useSerial")

    def boot_order(self, device: dict[str, Any], path: str) -> None:
        """A device's bootOrder: a positive integer no other device of the VM has (libvirt and
        KubeVirt refuse two devices with one boot order)."""
        order = integer(device.get("bootOrder"), f"{path}.bootOrder", low=1, high=MAX_BOOT_ORDER)
        if order is None:
            return
        if (other := self._boot.get(order)) is not None:
            raise fail(f"{path}.bootOrder", f"{order} is already the boot order of {other}")
        self._boot[order] = path

    def resources(self, domain: dict[str, Any], path: str, *, sized: bool) -> None:
        cpu = self.section(domain.get("cpu"), f"{path}.cpu", fields=_CPU)
        vcpus = 1
        for key in ("cores", "sockets", "threads"):
            vcpus *= integer(cpu.get(key), f"{path}.cpu.{key}", low=1, high=MAX_VCPUS) or 1
        if vcpus > MAX_VCPUS:
            raise fail(f"{path}.cpu", f"{vcpus} vCPUs (cores x sockets x threads); at most "
                                      f"{MAX_VCPUS}")  # fmt: skip
        word(cpu.get("model"), f"{path}.cpu.model")
        memory = self.section(domain.get("memory"), f"{path}.memory", fields=_MEMORY)
        res = self.section(domain.get("resources"), f"{path}.resources", fields=_RESOURCES)
        given = {f"{path}.memory.guest": memory.get("guest")}
        for key in ("requests", "limits"):
            at = f"{path}.resources.{key}"
            given[f"{at}.memory"] = mapping(res.get(key), at).get("memory")
        for field, value in given.items():
            if value is not None and not 0 < parse_quantity(value, field=field) <= MAX_GUEST_MEMORY:
                raise fail(field, f"{short(value)} must be more than zero and at most 8Ei")
        if not sized and all(value is None for value in given.values()):
            raise fail(f"{path}.resources.requests.memory", f"or {path}.memory.guest is required")

    def volumes(self, value: Any, path: str) -> set[str]:
        names: set[str] = set()
        for i, vol in enumerate(self.entries(value, path, fields=VOLUME_SOURCES | {"name"})):
            _named(vol, at := f"{path}[{i}]", seen=names)
            sources = [key for key in vol if key in VOLUME_SOURCES]
            if len(sources) > 1:
                raise fail(at, f"has {len(sources)} sources ({', '.join(sources)})")
            if len(vol) == 1:  # only a name; an unknown source already warned above
                raise fail(at, f"needs one of {', '.join(sorted(VOLUME_SOURCES))}")
            if not sources:
                continue
            source = mapping(vol[sources[0]], f"{at}.{sources[0]}")
            if sources[0] == "hostDisk":
                self.host_disk(source, f"{at}.hostDisk")
            elif sources[0] == "emptyDisk":
                if source.get("capacity") is None:
                    raise fail(f"{at}.emptyDisk.capacity", "is required")
                parse_quantity(source["capacity"], field=f"{at}.emptyDisk.capacity")
            elif sources[0] == "cloudInitNoCloud":
                for key in ("userData", "userDataBase64", "networkData", "networkDataBase64"):
                    text(source.get(key), f"{at}.cloudInitNoCloud.{key}")
            elif (needed := _SOURCE_KEY.get(sources[0])) is not None and not text(
                source.get(needed), f"{at}.{sources[0]}.{needed}"
            ):
                raise fail(f"{at}.{sources[0]}.{needed}", "is required")
        return names

    def host_disk(self, disk: dict[str, Any], path: str) -> None:
        self.section(disk, path, fields=_HOST_DISK)
        if not text(disk.get("path"), f"{path}.path"):
            raise fail(f"{path}.path", "is required")
        if disk.get("type") is None:
            raise fail(f"{path}.type", f"None is not one of {', '.join(HOST_DISK_TYPES)}")
        text(disk.get("type"), f"{path}.type", choices=HOST_DISK_TYPES)
        if disk.get("capacity") is not None:
            parse_quantity(disk["capacity"], field=f"{path}.capacity")
        elif disk["type"] == "DiskOrCreate":  # virtbus cannot size a disk it has to create
            raise fail(f"{path}.capacity", "is required when type is DiskOrCreate")

    def disk(self, disk: dict[str, Any], path: str) -> None:
        types = [key for key in DISK_TYPES if key in disk]
        if len(types) > 1:
            raise fail(path, f"has {' and '.join(types)}; a disk is one of disk, cdrom, lun")
        kind = types[0] if types else "disk"
        target = self.section(disk.get(kind), f"{path}.{kind}", fields=_DISK_TARGET)
        bus = text(target.get("bus"), f"{path}.{kind}.bus", choices=BUSES)
        boolean(target.get("readonly"), f"{path}.{kind}.readonly")
        if kind == "cdrom" and bus == "virtio":  # QEMU has no virtio CD-ROM; KubeVirt agrees
            raise fail(f"{path}.cdrom.bus", "a cdrom cannot use the virtio bus; use sata or scsi")
        if kind == "lun" and bus not in (None, "scsi"):  # the renderer's rule, said at apply
            raise fail(f"{path}.lun.bus", "a lun needs the scsi bus")
        text(disk.get("cache"), f"{path}.cache", choices=CACHE_MODES)
        word(disk.get("serial"), f"{path}.serial")
        self.boot_order(disk, path)
