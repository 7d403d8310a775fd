"""A KubeVirt VM spec in, libvirt domain XML out: what virt-launcher hands to libvirt.

virtbus keeps the user's KubeVirt spec on the log untouched; a node worker turns it into a domain
only when it runs the VM. This module is that translation, pure: the worker first asks
`workers.volumeplan` what each volume needs (an image pulled, a disk created, an ISO built),
resolves them to files, then calls `render_domain` with the paths (`hotplug_disk` renders one
more disk for a running domain). Anything the spec asks for that cannot run here raises
`ValidationError` naming the field, so the VM fails with a reason, not a libvirt error.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Final

from events.fields import fail as _fail
from events.fields import integer, short, word
from events.fields import mapping as _mapping
from events.quantity import MAX_GUEST_MEMORY, guest_memory_source, parse_quantity
from workers.hotplugxml import add_room
from workers.volumeplan import SPEC, ResolvedVolume, VolumePaths, entry_maps, vmi_spec

METADATA_NS: Final = "https://virtbus.dev/xmlns/domain/1"
# uuid5 namespace for domain UUIDs, so one VM uid always names the same libvirt domain.
UUID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, METADATA_NS)
USER_BINDINGS: Final = ("masquerade", "bridge", "slirp")  # QEMU user-mode networking off the VM
VM_NETWORK_BINDINGS: Final = ("masquerade", "bridge")  # the first NIC's, on the VM network
DEFAULT_BUS: Final = {"disk": "virtio", "cdrom": "sata", "lun": "scsi"}
BUS_PREFIX: Final = {"virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd"}
CACHE_MODES: Final = ("none", "writethrough", "writeback")
MAX_VCPUS: Final = 4096  # what QEMU's q35 machine addresses
MAX_BOOT_ORDER: Final = 2**31 - 1  # libvirt reads a boot order as a C int

_MAC_RE: Final = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")

ET.register_namespace("virtbus", METADATA_NS)


# --- the domain ----------------------------------------------------------------------------------


def render_domain(
    spec: dict[str, Any], *, name: str, namespace: str, uid: str, volumes: VolumePaths, kvm: bool,
    emulator: str | None = None, tap: str = "", mac: str = "",
) -> str:  # fmt: skip
    """The libvirt domain XML for a VM spec (`spec.template.spec` is read); `kvm=False` is TCG;
    `tap` and `mac`: the VM network's, for the first masquerade NIC (workers/vmnet.py)."""
    vmi = vmi_spec(spec)
    domain = _mapping(vmi.get("domain"), f"{SPEC}.domain")
    devices_spec = _mapping(domain.get("devices"), f"{SPEC}.domain.devices")
    root = ET.Element("domain", type="kvm" if kvm else "qemu")
    ET.SubElement(root, "name").text = f"{namespace}_{name}"  # KubeVirt's domain naming
    ET.SubElement(root, "uuid").text = str(uuid.uuid5(UUID_NAMESPACE, uid))
    meta = ET.SubElement(root, "metadata")
    ET.SubElement(meta, f"{{{METADATA_NS}}}vm", namespace=namespace, name=name, uid=uid)
    kib = str(-(-_memory_bytes(domain) // 1024))
    ET.SubElement(root, "memory", unit="KiB").text = kib
    ET.SubElement(root, "currentMemory", unit="KiB").text = kib
    vcpus, cpu = _cpu(_mapping(domain.get("cpu"), f"{SPEC}.domain.cpu"), kvm=kvm)
    ET.SubElement(root, "vcpu", placement="static").text = str(vcpus)
    machine = _mapping(domain.get("machine"), f"{SPEC}.domain.machine").get("type")
    os_el = ET.SubElement(root, "os")
    # An empty type is unset, as in KubeVirt: the default machine
    machine = (word(machine, f"{SPEC}.domain.machine.type") if machine != "" else None) or "q35"
    ET.SubElement(os_el, "type", arch="x86_64", machine=machine).text = "hvm"
    firmware = _mapping(domain.get("firmware"), f"{SPEC}.domain.firmware")
    bios = _mapping(_mapping(firmware.get("bootloader"), f"{SPEC}.domain.firmware.bootloader")
                    .get("bios"), f"{SPEC}.domain.firmware.bootloader.bios")  # fmt: skip
    if bios.get("useSerial") is True:  # KubeVirt's: the BIOS talks on the serial console
        ET.SubElement(os_el, "bios", useserial="yes")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    root.append(cpu)
    ET.SubElement(root, "clock", offset="utc")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        ET.SubElement(root, f"on_{event}").text = action
    devices = ET.SubElement(root, "devices")
    if emulator:
        ET.SubElement(devices, "emulator").text = emulator
    _disks(devices, devices_spec, vmi, volumes)
    _interfaces(devices, devices_spec, tap=tap, mac=mac)
    _console_and_display(devices, devices_spec)
    _panic_devices(devices, devices_spec)
    add_room(root, domain, guest=int(kib) * 1024)  # CPU and memory hotplug (maxSockets...)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def guest_memory_bytes(spec: dict[str, Any]) -> int:
    """The guest memory a VM spec asks for (what a migration has to move)."""
    return _memory_bytes(_mapping(vmi_spec(spec).get("domain"), f"{SPEC}.domain"))


def _memory_bytes(domain: dict[str, Any]) -> int:
    """Guest memory as KubeVirt sizes it (`events.manifest.guest_memory_source`), checked."""
    at = f"{SPEC}.domain"
    _mapping(domain.get("memory"), f"{at}.memory")  # a wrong shape is named, not passed over
    res = _mapping(domain.get("resources"), f"{at}.resources")
    for key in ("requests", "limits"):
        _mapping(res.get(key), f"{at}.resources.{key}")
    found = guest_memory_source(domain)
    if found is None:
        raise _fail(f"{at}.resources.requests.memory", f"or {at}.memory.guest is required")
    field, value = f"{at}.{found[0]}", found[1]
    if not 0 < (size := parse_quantity(value, field=field)) <= MAX_GUEST_MEMORY:
        raise _fail(field, f"{short(value)} must be more than zero and at most 8Ei")
    return size


def _cpu(cpu: dict[str, Any], *, kvm: bool) -> tuple[int, ET.Element]:
    """The vCPU count and the <cpu> element: topology, and a model when one is asked for."""
    counts: dict[str, int] = {}
    for key in ("sockets", "cores", "threads"):
        at = f"{SPEC}.domain.cpu.{key}"
        counts[key] = integer(cpu.get(key), at, low=1, high=MAX_VCPUS) or 1
    if (vcpus := counts["sockets"] * counts["cores"] * counts["threads"]) > MAX_VCPUS:
        raise _fail(f"{SPEC}.domain.cpu", f"{vcpus} vCPUs; libvirt allows at most {MAX_VCPUS}")
    el = ET.Element("cpu")
    model = word(cpu.get("model"), f"{SPEC}.domain.cpu.model")
    if model in ("host-model", "host-passthrough"):
        if kvm:  # TCG cannot mirror the host CPU; QEMU's default model is what it can emulate
            el.set("mode", model)
    elif model:
        ET.SubElement(el, "model", fallback="allow").text = model
    ET.SubElement(el, "topology", {k: str(v) for k, v in counts.items()})
    return counts["sockets"] * counts["cores"] * counts["threads"], el


def _disks(
    devices: ET.Element, devices_spec: dict[str, Any], vmi: dict[str, Any], volumes: VolumePaths
) -> None:
    declared = {v.get("name") for v in entry_maps(vmi.get("volumes"), f"{SPEC}.volumes")}
    used: dict[str, int] = {}  # per target prefix, so sata and scsi never both get sda
    path = f"{SPEC}.domain.devices.disks"
    for i, disk in enumerate(entry_maps(devices_spec.get("disks"), path)):
        at = f"{path}[{i}]"
        vol_name = disk.get("name")
        if vol_name not in declared:
            raise _fail(f"{at}.name", f"no volume named {vol_name!r} in {SPEC}.volumes")
        if (resolved := volumes.get(str(vol_name))) is None:
            raise _fail(at, f"volume {vol_name!r} was not resolved to a file on this node")
        _, bus = _disk_kind(disk, at)
        prefix = BUS_PREFIX[bus]
        used[prefix] = (index := used.get(prefix, 0)) + 1
        devices.append(disk_element(disk, resolved, dev=prefix + _dev_suffix(index), at=at))
    # Always there, as in KubeVirt: a volume hotplugged later attaches to it.
    ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")


def _disk_kind(disk: dict[str, Any], at: str) -> tuple[str, str]:
    """A disk's kind (disk, cdrom or lun) and bus, checked."""
    kinds = [k for k in DEFAULT_BUS if k in disk]
    if len(kinds) > 1:
        raise _fail(at, f"has {' and '.join(kinds)}; a disk is one of disk, cdrom, lun")
    kind = kinds[0] if kinds else "disk"
    bus = _mapping(disk.get(kind), f"{at}.{kind}").get("bus") or DEFAULT_BUS[kind]
    if bus not in BUS_PREFIX:
        raise _fail(f"{at}.{kind}.bus", f"{bus!r} is not one of {', '.join(BUS_PREFIX)}")
    if kind == "cdrom" and bus == "virtio":
        raise _fail(f"{at}.cdrom.bus", "a cdrom cannot use the virtio bus; use sata or scsi")
    if kind == "lun" and bus != "scsi":
        raise _fail(f"{at}.lun.bus", "a lun needs the scsi bus")
    return kind, bus


def disk_element(
    disk: dict[str, Any], resolved: ResolvedVolume, *, dev: str, at: str = "disk"
) -> ET.Element:
    """One KubeVirt disk (`spec.domain.devices.disks[i]`) as a libvirt <disk>, target `dev`."""
    kind, bus = _disk_kind(disk, at)
    target = _mapping(disk.get(kind), f"{at}.{kind}")
    # libvirt only passes SCSI commands through for a block device.
    el = ET.Element("disk", type="block" if kind == "lun" else "file", device=kind)
    driver = {"name": "qemu", "type": "raw" if kind == "lun" else resolved.format}
    if (cache := disk.get("cache")) is not None:
        if cache not in CACHE_MODES:
            raise _fail(f"{at}.cache", f"{cache!r} is not one of {', '.join(CACHE_MODES)}")
        driver["cache"] = cache
    ET.SubElement(el, "driver", driver)
    ET.SubElement(el, "source", {"dev" if kind == "lun" else "file": resolved.path})
    ET.SubElement(el, "target", dev=dev, bus=bus)
    if kind == "cdrom" or resolved.readonly or target.get("readonly") is True:
        ET.SubElement(el, "readonly")
    if serial := word(disk.get("serial"), f"{at}.serial"):
        ET.SubElement(el, "serial").text = serial
    _boot(el, disk, at)
    return el


def disk_xml_of(domain_xml: str, path: str) -> str | None:
    """The <disk> element of a domain whose source is `path`, as XML, or None."""
    for el in ET.fromstring(domain_xml).findall("./devices/disk"):
        source = el.find("source")
        if source is not None and path in (source.get("file"), source.get("dev")):
            return ET.tostring(el, encoding="unicode")
    return None


def hotplug_disk(disk: dict[str, Any], resolved: ResolvedVolume, *, domain_xml: str) -> str:
    """The <disk> XML that hotplugs `disk` into a running domain, on the next free sd* target."""
    _, bus = _disk_kind(disk, "disk")
    prefix = BUS_PREFIX[bus]
    taken = {t.get("dev") for t in ET.fromstring(domain_xml).findall("./devices/disk/target")}
    index = next(i for i in range(len(taken) + 1) if prefix + _dev_suffix(i) not in taken)
    el = disk_element(disk, resolved, dev=prefix + _dev_suffix(index))
    return ET.tostring(el, encoding="unicode")


def _dev_suffix(index: int) -> str:
    """a..z, aa..az, ...: libvirt's own naming of the nth disk on a bus."""
    suffix, n = "", index + 1
    while n > 0:
        n, rem = divmod(n - 1, 26)
        suffix = chr(ord("a") + rem) + suffix
    return suffix


def _boot(el: ET.Element, device: dict[str, Any], at: str) -> None:
    order = device.get("bootOrder")
    if order is None:
        return
    integer(order, f"{at}.bootOrder", low=1, high=MAX_BOOT_ORDER)
    ET.SubElement(el, "boot", order=str(order))


def _interfaces(devices: ET.Element, devices_spec: dict[str, Any], *, tap: str, mac: str) -> None:
    path = f"{SPEC}.domain.devices.interfaces"
    for i, nic in enumerate(entry_maps(devices_spec.get("interfaces"), path)):
        at = f"{path}[{i}]"
        # No binding written means bridge, KubeVirt's default for the pod network.
        binding = next((key for key in (*USER_BINDINGS, "sriov", "passt", "binding") if key in nic),
                       "bridge")  # fmt: skip
        if binding not in USER_BINDINGS:
            raise _fail(f"{at}.{binding}", "is not supported; use masquerade or bridge")
        on_net = bool(tap) and i == 0 and binding in VM_NETWORK_BINDINGS  # the node made the tap
        el = ET.SubElement(devices, "interface", type="ethernet" if on_net else "user")
        if (given := nic.get("macAddress")) is not None or (on_net and mac):
            ET.SubElement(
                el, "mac", address=mac if given is None else _mac(given, f"{at}.macAddress")
            )
        if on_net:  # QEMU only opens it
            ET.SubElement(el, "target", dev=tap, managed="no")
        model = word(nic.get("model"), f"{at}.model") or "virtio"
        ET.SubElement(el, "model", type=model)
        _boot(el, nic, at)


def _mac(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise _fail(field, f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    mac = value.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:  # libvirt refuses multicast addresses for a NIC
        raise _fail(field, f"{value!r} is a multicast address")
    return mac


def _panic_devices(devices: ET.Element, devices_spec: dict[str, Any]) -> None:
    """KubeVirt's `panicDevices`: a guest kernel panic is then reported (pvpanic), not silent."""
    path = f"{SPEC}.domain.devices.panicDevices"
    for i, panic in enumerate(entry_maps(devices_spec.get("panicDevices"), path)):
        model = word(panic.get("model"), f"{path}[{i}].model") or "isa"
        if model != "isa":
            raise _fail(f"{path}[{i}].model", f"{model!r} is not supported; use isa (pvpanic)")
        ET.SubElement(devices, "panic", model="isa")


def _console_and_display(devices: ET.Element, devices_spec: dict[str, Any]) -> None:
    # KubeVirt attaches each of these unless the spec opts out explicitly.
    if devices_spec.get("autoattachSerialConsole") is not False:
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
    if devices_spec.get("autoattachGraphicsDevice") is not False:
        # Loopback only: a VNC console has no password, so it is reached through a tunnel.
        graphics = ET.SubElement(devices, "graphics", type="vnc", autoport="yes")
        graphics.set("listen", "127.0.0.1")
        ET.SubElement(graphics, "listen", type="address", address="127.0.0.1")
        video = _mapping(devices_spec.get("video"), f"{SPEC}.domain.devices.video")
        kind = word(video.get("type"), f"{SPEC}.domain.devices.video.type") or "vga"
        ET.SubElement(ET.SubElement(devices, "video"), "model", type=kind)
    # KubeVirt's, always: the guest agent's channel (unused by a guest without an agent).
    agent = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(agent, "target", type="virtio", name="org.qemu.guest_agent.0")
    balloon = devices_spec.get("autoattachMemBalloon") is not False
    ET.SubElement(devices, "memballoon", model="virtio" if balloon else "none")
