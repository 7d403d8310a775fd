"""CPU and memory hotplug, KubeVirt's way: what an instance boots with, and what a changed VM
spec asks of a running one (a live change, or `RestartRequired` with KubeVirt's words).

Pure. Under the KubeVirt object's `vmRolloutStrategy: LiveUpdate` (KubeVirt's default) an
instance boots with room to grow: `maxSockets` CPU sockets and `maxGuest` memory, from the VM's own
values, else the object's `liveUpdateConfiguration`, else `maxHotplugRatio` (4) times what it
asks (memory only from 1Gi up, as KubeVirt's virtio-mem needs). The controller then plugs sockets
and memory into the running instance when the spec grows within that room
(pkg/virt-controller/watch/vm: handleCPUChangeRequest, handleMemoryHotplugRequest); anything else
waits for the next start. Under `Stage` every change waits.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Final

import msgspec

from events import model as m
from events.kubevirt import Config
from events.quantity import guest_memory_source, parse_quantity
from events.state import RUNNING, VMState
from events.vmstate import NOT_LIVE_UPDATABLE, migrating

MAX_VCPUS: Final = 512  # KubeVirt's bound on maxSockets x cores x threads
BLOCK: Final = 2 << 20  # virtio-mem's block: guest memory must be 2Mi aligned
MIN_HOTPLUG_GUEST: Final = 1 << 30  # memory hotplug only from 1Gi (KubeVirt's)
_LIVE_PATHS: Final = (("cpu", "sockets"), ("memory", "guest"))


def _domain(spec: dict[str, Any]) -> dict[str, Any]:
    vmi = (spec.get("template") or {}).get("spec") or {} if "template" in spec else spec
    domain = vmi.get("domain")
    return domain if isinstance(domain, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _guest(domain: dict[str, Any]) -> int:
    """Guest memory as KubeVirt sizes it (and the node boots it), bytes; 0: unset."""
    found = guest_memory_source(domain)
    return 0 if found is None else parse_quantity(found[1], field=found[0])


def instance_size(spec: dict[str, Any], config: Config) -> m.InstanceSize:
    """What an instance of the (effective) VM spec boots with, and its hotplug room."""
    domain = _domain(spec)
    cpu, memory = domain.get("cpu") or {}, domain.get("memory") or {}
    sockets, cores, threads = (_count(cpu.get(k)) for k in ("sockets", "cores", "threads"))
    guest = _guest(domain)
    if not config.live_update:
        return m.InstanceSize(sockets=sockets, cores=cores, threads=threads, guest=guest)
    max_sockets = _count(cpu.get("maxSockets")) if cpu.get("maxSockets") else 0
    if not max_sockets and config.max_cpu_sockets:
        max_sockets = max(config.max_cpu_sockets, sockets)
    if not max_sockets:  # KubeVirt's defaults.setupCPUHotplug
        max_sockets = sockets * config.max_hotplug_ratio
        if max_sockets * cores * threads > MAX_VCPUS:
            max_sockets = max(MAX_VCPUS // (cores * threads), sockets)
    given = memory.get("maxGuest")
    max_guest = parse_quantity(given, field="memory.maxGuest") if given else 0
    max_guest = max_guest or config.max_guest or guest * config.max_hotplug_ratio
    if guest < MIN_HOTPLUG_GUEST or guest % BLOCK or max_guest % BLOCK or max_guest < guest:
        max_guest = 0  # KubeVirt leaves memory hotplug off for this VM
    return m.InstanceSize(sockets=sockets, cores=cores, threads=threads, max_sockets=max_sockets,
                          guest=guest, max_guest=max_guest)  # fmt: skip


def sized_spec(spec: dict[str, Any], size: m.InstanceSize | None) -> dict[str, Any]:
    """The spec a node defines the instance from: its boot size and room, in KubeVirt's VMI
    fields (`cpu.maxSockets`, `memory.maxGuest`), whatever the VM spec says since."""
    if size is None:
        return spec
    # Copied along the path it changes only (a deep copy of every spec was 1 % of a start's CPU);
    # the rest is shared with the state's spec, which nothing edits.
    out = dict(spec)
    if "template" in out:
        out["template"] = template = dict(out.get("template") or {})
        template["spec"] = vmi = dict(template.get("spec") or {})
    else:
        vmi = out
    vmi["domain"] = domain = dict(vmi.get("domain") or {})
    domain["cpu"] = cpu = dict(domain.get("cpu") or {})
    cpu.update(sockets=size.sockets, cores=size.cores, threads=size.threads)
    cpu.pop("maxSockets", None)
    if size.max_sockets:
        cpu["maxSockets"] = size.max_sockets
    domain["memory"] = memory = dict(domain.get("memory") or {})
    memory.pop("maxGuest", None)
    if size.guest:
        memory["guest"] = str(size.guest)
    if size.max_guest:
        memory["maxGuest"] = str(size.max_guest)
    return out


def moved_spec(s: VMState) -> dict[str, Any]:
    """The spec a migration's target defines the instance from: its size, with the sockets
    plugged since it booted (a cold move boots it afresh there)."""
    size = s.size
    if size is not None and s.sockets_now:
        size = msgspec.structs.replace(size, sockets=s.sockets_now)
    return sized_spec(s.spec, size)


def only_live_changes(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two VM specs differ in their template at most in CPU sockets and guest memory:
    the fields the controller may change live (KubeVirt's syncRestartRequired)."""
    old_t, new_t = copy.deepcopy(old.get("template")), copy.deepcopy(new.get("template"))
    if old_t == new_t:
        return True
    od, nd = _domain({"template": old_t or {}}), _domain({"template": new_t or {}})
    for (section, key), domain in itertools.product(_LIVE_PATHS, (od, nd)):
        if isinstance(part := domain.get(section), dict):
            part.pop(key, None)
            if not part:  # `cpu: {sockets: 2}` added where there was none is a live change too
                del domain[section]
    return bool(old_t == new_t)


def resize_events(s: VMState, spec: dict[str, Any], config: Config) -> list[m.Event]:
    """What the running instance needs for `spec` (the VM's effective spec): a hotplug, or
    `RestartRequired`; nothing while one is under way, the instance migrates, or a restart is
    required already."""
    size = s.size
    if size is None or s.phase != RUNNING or migrating(s) or s.restart_required:
        return []
    if s.hot_sockets or s.hot_guest:
        return []
    domain = _domain(spec)
    events: list[m.Event] = []
    cpu = domain.get("cpu") or {}
    if (_count(cpu.get("cores")), _count(cpu.get("threads"))) != (size.cores, size.threads):
        return [m.VMRestartRequired(message=NOT_LIVE_UPDATABLE)]  # e.g. another instance type's
    sockets = _count(cpu.get("sockets"))
    if sockets != s.sockets_now:
        if not config.live_update:
            return [m.VMRestartRequired(message=NOT_LIVE_UPDATABLE)]
        if sockets > size.max_sockets:
            why = "CPU sockets updated in template spec to a value higher than what's available"
            return [m.VMRestartRequired(message=why)]
        if sockets < s.sockets_now:
            return [m.VMRestartRequired(message="Reduction of CPU socket count requires a restart")]
        events.append(m.HotVCPUChangeRequested(sockets=sockets))
    guest = _guest(domain)
    if guest and guest != s.guest_now:
        if (refusal := _memory_refusal(guest, size, config)) is not None:
            return [m.VMRestartRequired(message=refusal)]
        events.append(m.HotMemoryChangeRequested(guest=guest))
    return events


def _memory_refusal(guest: int, size: m.InstanceSize, config: Config) -> str | None:
    """KubeVirt's RestartRequired message for a memory change it cannot make live, or None."""
    if not config.live_update:
        return NOT_LIVE_UPDATABLE
    updated = "memory updated in template spec"
    if not size.max_guest:
        return f"{updated}. Memory-hotplug is not available for this VM configuration"
    if guest % BLOCK:
        return "memory hotplug not supported, Guest memory must be 2Mi aligned"
    if guest < size.guest:
        return f"{updated} to a value lower than what the VM started with"
    if guest > size.max_guest:
        return f"{updated} to a value higher than what's available"
    return None
