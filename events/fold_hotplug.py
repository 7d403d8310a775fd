"""The VM fold's volume hotplug handlers: `addvolume` and `removevolume` on a running VM.

Pure functions of the state and one event, put into the fold's table by `events/state.py`. A
hotplug ends with its instance (`events/fold_lifecycle.py` clears it when the VM stops or fails).
"""

from __future__ import annotations

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.vmstate import FAILED, Hotplug, VMState


def volume_attach_requested(s: VMState, e: m.VolumeAttachRequested, env: Stamped) -> VMState:
    name = str(e.volume.get("name", ""))
    plug = Hotplug(e.volume, e.disk, requested=env.version)
    return replace(s, volumes={**s.volumes, name: "Pending"}, hotplug={**s.hotplug, name: plug})


def volume_attached(s: VMState, e: m.VolumeAttached, env: Stamped) -> VMState:
    plug = s.hotplug.get(e.volume)
    hotplug = s.hotplug if plug is None else {**s.hotplug, e.volume: replace(plug, reason="")}
    return replace(s, volumes={**s.volumes, e.volume: "Ready"}, hotplug=hotplug)


def volume_attach_failed(s: VMState, e: m.VolumeAttachFailed, env: Stamped) -> VMState:
    plug = s.hotplug.get(e.volume)
    hotplug = s.hotplug if plug is None else {**s.hotplug, e.volume: replace(plug, reason=e.reason)}
    return replace(s, volumes={**s.volumes, e.volume: FAILED}, hotplug=hotplug)


def volume_detach_requested(s: VMState, e: m.VolumeDetachRequested, env: Stamped) -> VMState:
    if s.volumes.get(e.volume) == FAILED:  # its attach failed: nothing is plugged to unplug
        return volume_detached(s, m.VolumeDetached(volume=e.volume), env)
    plug = s.hotplug.get(e.volume)
    hotplug = (
        s.hotplug if plug is None
        else {**s.hotplug, e.volume: replace(plug, requested=env.version)}
    )  # fmt: skip
    return replace(s, volumes={**s.volumes, e.volume: "Detaching"}, hotplug=hotplug)


def volume_detached(s: VMState, e: m.VolumeDetached, env: Stamped) -> VMState:
    return replace(
        s,
        volumes={k: v for k, v in s.volumes.items() if k != e.volume},
        hotplug={k: v for k, v in s.hotplug.items() if k != e.volume},
    )


# --- CPU and memory -------------------------------------------------------------------------------


def hot_vcpu_change_requested(s: VMState, e: m.HotVCPUChangeRequested, env: Stamped) -> VMState:
    return replace(s, hot_sockets=e.sockets, hot_version=env.version)


def hot_vcpu_changed(s: VMState, e: m.HotVCPUChanged, env: Stamped) -> VMState:
    return replace(s, sockets_now=e.sockets, hot_sockets=0)


def hot_memory_change_requested(s: VMState, e: m.HotMemoryChangeRequested, env: Stamped) -> VMState:
    return replace(s, hot_guest=e.guest, hot_version=env.version)


def hot_memory_changed(s: VMState, e: m.HotMemoryChanged, env: Stamped) -> VMState:
    return replace(s, guest_now=e.guest, hot_guest=0)


def guest_memory_plugged(s: VMState, e: m.GuestMemoryPlugged, env: Stamped) -> VMState:
    return replace(s, guest_plugged=e.plugged)


def hot_change_failed(s: VMState, e: m.HotChangeFailed, env: Stamped) -> VMState:
    # KubeVirt's words: what failed live waits for the next start.
    if e.resource == "memory":
        why = ("memory updated in template spec. Memory-hotplug failed and is not available "
               "for this VM configuration")  # fmt: skip
        return replace(s, hot_guest=0, restart_required=s.running, restart_message=why)
    why = f"CPU sockets updated in template spec. CPU hotplug failed: {e.reason}"
    return replace(s, hot_sockets=0, restart_required=s.running, restart_message=why)


def vm_restart_required(s: VMState, e: m.VMRestartRequired, env: Stamped) -> VMState:
    if not s.running:
        return s
    return replace(s, restart_required=True, restart_message=e.message)
