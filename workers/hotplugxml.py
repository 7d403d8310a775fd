"""The room a domain is given to grow while it runs, and the XML that grows it: KubeVirt's CPU and
memory hotplug (virt-launcher's converter, compute/cpu.go and compute/memory.go).

A spec with `cpu.maxSockets` (the orchestrator puts KubeVirt's VMI fields there) gets
`maxSockets` sockets in its topology, of which only the asked-for ones are present at boot
(`<vcpu current=...>`): libvirt's setVcpus plugs the others. One with `memory.maxGuest` gets
libvirt's `maxMemory`, a NUMA cell holding the boot memory and a virtio-mem device for the rest,
whose `requested` size is what a memory hotplug changes. Pure; `workers/domain.py` calls
`add_room` on the domain it rendered.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Final

from events.fields import fail, integer
from events.quantity import parse_quantity

BLOCK_KIB: Final = 2048  # virtio-mem's block, KubeVirt's HotplugBlockAlignmentBytes
SPEC: Final = "spec.template.spec.domain"


def add_room(root: ET.Element, domain: dict[str, Any], *, guest: int) -> None:
    """Give the rendered domain `root` the hotplug room its spec's domain section asks for;
    `guest` is the boot memory in bytes."""
    cpu, memory = domain.get("cpu") or {}, domain.get("memory") or {}
    vcpu, topology = root.find("vcpu"), root.find("cpu/topology")
    if cpu.get("maxSockets") and vcpu is not None and topology is not None:
        sockets = int(topology.get("sockets", "1"))
        most = integer(cpu["maxSockets"], f"{SPEC}.cpu.maxSockets", low=sockets, high=4096) or 1
        per_socket = int(topology.get("cores", "1")) * int(topology.get("threads", "1"))
        vcpu.set("current", vcpu.text or "1")
        vcpu.text = str(most * per_socket)
        topology.set("sockets", str(most))
    if not memory.get("maxGuest"):
        return
    most = parse_quantity(memory["maxGuest"], field=f"{SPEC}.memory.maxGuest")
    if most <= guest:
        return
    if most % (BLOCK_KIB * 1024) or guest % (BLOCK_KIB * 1024):
        raise fail(f"{SPEC}.memory.maxGuest", "and the guest memory must be 2Mi aligned")
    ET.SubElement(root, "maxMemory", slots="1", unit="KiB").text = str(most // 1024)
    for total in ("memory", "currentMemory"):  # libvirt counts the device's room in the total
        if (el := root.find(total)) is not None:
            el.text = str(most // 1024)
    cpu_el = root.find("cpu")
    numa = ET.SubElement(cpu_el if cpu_el is not None else ET.SubElement(root, "cpu"), "numa")
    vcpus = int(vcpu.text or "1") if vcpu is not None else 1
    ET.SubElement(numa, "cell", id="0", cpus=f"0-{vcpus - 1}", memory=str(guest // 1024),
                  unit="KiB")  # fmt: skip
    devices = root.find("devices")
    if devices is not None:
        devices.append(memory_device(size=most - guest, requested=0))


def memory_device(*, size: int, requested: int) -> ET.Element:
    """The virtio-mem device of `size` bytes, of which `requested` are plugged."""
    dev = ET.Element("memory", model="virtio-mem")
    target = ET.SubElement(dev, "target")
    ET.SubElement(target, "size", unit="KiB").text = str(size // 1024)
    ET.SubElement(target, "node").text = "0"
    ET.SubElement(target, "block", unit="KiB").text = str(BLOCK_KIB)
    ET.SubElement(target, "requested", unit="KiB").text = str(requested // 1024)
    return dev


def resized_memory_device(domain_xml: str, *, requested: int) -> str | None:
    """The running domain's virtio-mem device with `requested` bytes plugged, for libvirt's
    updateDevice; None when the domain has none (it booted without memory hotplug)."""
    root = ET.fromstring(domain_xml)
    for dev in root.iterfind("devices/memory"):
        if dev.get("model") == "virtio-mem" and (req := dev.find("target/requested")) is not None:
            req.set("unit", "KiB")
            req.text = str(requested // 1024)
            return ET.tostring(dev, encoding="unicode")
    return None
