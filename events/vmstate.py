"""The VM's state: what the fold of a VM's events yields, and what is derived from it.

The types (`VMState` and its parts) and KubeVirt's strings live here, apart from the handlers that
build them (`events/fold_*.py`) and the table that puts those together (`events/state.py`, the
public face: import from there). Strings are KubeVirt's: `status` is the VM's printableStatus,
`phase` the VMI's phase ("" while there is no VMI).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from events.folding import Skipped
from events.model_hotplug import InstanceSize

RUN_STRATEGIES: Final = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")

# VMI phases (kubevirt.io/v1 VirtualMachineInstancePhase).
PENDING, SCHEDULING, SCHEDULED, RUNNING = "Pending", "Scheduling", "Scheduled", "Running"
SUCCEEDED, FAILED = "Succeeded", "Failed"

# VM printable statuses (kubevirt.io/v1 VirtualMachinePrintableStatus).
STOPPED, STARTING, STOPPING, TERMINATING = "Stopped", "Starting", "Stopping", "Terminating"
PAUSED, MIGRATING, CRASH_LOOP = "Paused", "Migrating", "CrashLoopBackOff"
UNSCHEDULABLE = "ErrorUnschedulable"
DELETED = "Deleted"  # virtbus only: the history outlives the object
IN_PROGRESS = "InProgress"  # a VirtualMachineSnapshot being taken


class Migration(msgspec.Struct, frozen=True, gc=False):
    """The current or last migration attempt; every attempt stays in the log."""

    id: str
    source: str
    target: str
    phase: str = "Scheduling"
    percent: float = 0.0
    live: bool = True
    reason: str = ""
    requested: datetime | None = None  # queue order while Pending
    scheduled: datetime | None = None  # when the target was chosen: the duration counts from here
    cancel: bool = False  # migrate-cancel asked
    target_pod: str = ""  # the target's launcher, until it is removed
    target_agent: bool | None = None  # what the target last told of the guest agent, if anything
    policy: str = ""  # the MigrationPolicy it runs by (KubeVirt's migrationPolicyName)


# KubeVirt's VirtualMachineInstanceMigration phases beyond the shared ones.
TARGET_READY, PREPARING_TARGET = "TargetReady", "PreparingTarget"


def migration_active(mig: Migration | None) -> bool:
    """A migration asked for and not concluded (queued ones included)."""
    return mig is not None and mig.phase not in (SUCCEEDED, FAILED)


class Hotplug(msgspec.Struct, frozen=True, gc=False):
    """A volume hotplugged into the running instance: what to attach, and the request's version."""

    volume: dict[str, Any]
    disk: dict[str, Any]
    requested: int = 0  # version of the latest attach or detach request
    reason: str = ""  # why the attach failed


class Revision(msgspec.Struct, frozen=True, gc=False):
    """A captured instance type or preference (KubeVirt's ControllerRevision)."""

    kind: str  # KubeVirt's, e.g. VirtualMachineClusterInstancetype
    name: str
    revision: str
    spec: dict[str, Any] = {}
    captured: datetime | None = None  # when (the ControllerRevision's creationTimestamp)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A VirtualMachineSnapshot of this VM: its spec then, and copies of its persistent volumes."""

    name: str
    requested: int = 0  # version of the request: names can be used again after a delete
    phase: str = IN_PROGRESS  # KubeVirt's: InProgress, Succeeded, Failed
    online: bool = False
    node: str = ""
    spec: dict[str, Any] = {}
    volumes: list[str] = []
    skipped: dict[str, str] = {}
    created: datetime | None = None
    ready_at: datetime | None = None
    failed_at: datetime | None = None
    size_bytes: int = 0
    reason: str = ""

    @property
    def in_progress(self) -> bool:
        return self.phase == IN_PROGRESS


class Restore(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The current or last VirtualMachineRestore; every one stays in the log."""

    name: str
    snapshot: str
    node: str = ""
    complete: bool = False
    reason: str = ""  # why it failed
    created: datetime | None = None
    done_at: datetime | None = None


class MemoryDump(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """KubeVirt's `status.memoryDumpRequest`: the claim, and where its latest dump is."""

    claim: str
    phase: str = "InProgress"  # KubeVirt's: InProgress, Completed, Failed
    requested: int = 0  # version of the request
    vmi_uid: str = ""  # the instance whose memory is dumped
    started: datetime | None = None
    ended: datetime | None = None
    file_name: str = ""
    message: str = ""
    node: str = ""  # where the dump was written (its claim's node)


class VMState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    namespace: str = ""
    name: str = ""
    version: int = 0
    exists: bool = False
    deleted: bool = False
    spec: dict[str, Any] = {}
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    source_kind: str = "VirtualMachine"  # what was applied: a VM, a lone VMI, a replica set's VMI
    run_strategy: str = "Halted"
    created: datetime | None = None
    updated: datetime | None = None
    status: str = STOPPED
    phase: str = ""
    node: str = ""
    vmi_uid: str = ""
    ready: bool = False
    paused: bool = False
    restart_required: bool = False
    restart_message: str = ""  # why, when not KubeVirt's generic words (a hotplug refused)
    failures: int = 0
    reason: str = ""
    migration: Migration | None = None
    migrations: int = 0
    home: str = ""  # the node a cold migration moved a stopped VM's definition to: starts go there
    snapshots: dict[str, Snapshot] = {}
    restore: Restore | None = None
    last_node: str = ""  # where the VM ran or was moved to last: its persistent volumes are there
    renamed_to: str = ""  # this life ended in a rename: the VM goes on under that name
    volumes: dict[str, str] = {}  # hotplugged volume -> Pending, Ready, Failed, Detaching
    hotplug: dict[str, Hotplug] = {}
    last_rejection: str = ""
    restarting: bool = False  # a restart was asked: start again once the instance is down
    want_paused: bool = False  # what the user asked; `paused` is what the node observed
    intent_version: int = 0  # version of the latest start/stop/restart/pause/unpause request
    reset_asked: int = 0  # version of the latest reset request (of instance `reset_vmi`)
    reset_vmi: str = ""
    reset_done: int = 0  # the latest reset the node carried out
    memory_dump: MemoryDump | None = None
    started: datetime | None = None  # when the current instance's domain started
    backoff_until: datetime | None = None  # CrashLoopBackOff: no restart before this
    stop_grace: int | None = None  # how the latest stop asked to be done
    stop_force: bool = False
    agent_connected: bool = False  # the guest agent of the running instance answers (KubeVirt's)
    soft_reboot: str = ""  # the instance a soft reboot was asked of, until its node asked it
    soft_reboot_version: int = 0  # the request's version (its work item's id)
    ip: str = ""  # the instance's address on the VM network (events/model_network.py)
    ip_vmi: str = ""  # the instance that holds `ip`: another (or none) means it is to be released
    mac: str = ""  # the instance's NIC address, decided with `ip`
    cidr: str = ""  # the pool `ip` is of: a `bridge` guest gets its prefix and gateway by DHCP
    revisions: dict[str, Revision] = {}  # "instancetype"/"preference" -> what sizes the VM
    size: InstanceSize | None = None  # what the current instance booted with
    sockets_now: int = 0  # the instance's CPU sockets now (hotplug changes them)
    vmi_since: datetime | None = None  # when the instance was asked for (the VMI's creation)
    guest_now: int = 0  # the instance's guest memory now, bytes (what libvirt took)
    guest_plugged: int = 0  # of the hotplug memory, what the guest itself has plugged (bytes)
    hot_sockets: int = 0  # a CPU hotplug under way, to this many sockets (KubeVirt's HotVCPUChange)
    hot_guest: int = 0  # a memory hotplug under way, to this many bytes (HotMemoryChange)
    hot_version: int = 0  # the version of the latest hotplug request
    skipped: tuple[Skipped, ...] = ()  # events the fold could not take (events/folding.py)

    @property
    def running(self) -> bool:
        """A VMI exists (in any phase short of its end)."""
        return self.phase in (PENDING, SCHEDULING, SCHEDULED, RUNNING)

    @property
    def snapshotting(self) -> str:
        """The snapshot being taken (KubeVirt's `status.snapshotInProgress`), or ""."""
        return next((n for n, snap in self.snapshots.items() if snap.in_progress), "")

    @property
    def restoring(self) -> bool:
        """A VirtualMachineRestore is under way: the VM must not start."""
        return self.restore is not None and not self.restore.complete and not self.restore.reason


# --- derived from the state (shared by the handlers of several concepts) -------------------------


def guest_end(reason: str) -> str:
    """What an instance that ended by itself is said to have done, from the reason the node saw
    (libvirt's word, a crash's detail in brackets): "guest shut down", "guest crashed (panicked)"
    (the words KubeVirt users ask for: kubevirt#8817, VEP 362)."""
    if reason in ("", "shutdown"):
        return "guest shut down"
    return f"guest {reason}"


def migrating(s: VMState) -> bool:
    """A migration under way makes the VM Migrating; a queued (Pending) one not yet, as in
    KubeVirt."""
    return migration_active(s.migration) and s.migration.phase != PENDING  # type: ignore[union-attr]


def running_status(s: VMState) -> str:
    """The printable status of a running VM: KubeVirt's precedence, Migrating over Paused over
    Running."""
    if migrating(s):
        return MIGRATING
    return PAUSED if s.paused else RUNNING


def with_migration(s: VMState, migration_id: str, **changes: Any) -> Migration | None:
    """The VM's migration changed, if it is the one named (a late event of an earlier attempt
    changes nothing)."""
    if s.migration is None or s.migration.id != migration_id:
        return s.migration
    return replace(s.migration, **changes)


def spec_says(spec: dict[str, Any], strategy: str) -> dict[str, Any]:
    """The VM spec once virt-api's start/stop patched it: `running` (or `runStrategy`, when the
    spec uses that) says `strategy`, so `get vm -o yaml` and the next `apply` see what runs."""
    if "template" not in spec:  # a bare VMI's spec has neither field
        return spec
    if spec.get("runStrategy") is not None:
        return {**spec, "runStrategy": strategy}
    return {**spec, "running": strategy == "Always"}


NOT_LIVE_UPDATABLE: Final = "a non-live-updatable field was changed in the template spec"


def conditions(s: VMState) -> list[dict[str, str]]:
    """KubeVirt-style conditions derived from the state (never stored, so never stale)."""
    out = [
        {
            "type": "Ready",
            "status": str(s.ready),
            "reason": "" if s.ready else (s.reason or ("VMINotExists" if not s.running else "")),
        }
    ]
    if s.paused:
        out.append({"type": "Paused", "status": "True", "reason": "PausedByUser"})
    if s.agent_connected and s.phase == RUNNING:  # KubeVirt shows it only while it holds
        out.append({"type": "AgentConnected", "status": "True"})
    if s.status == UNSCHEDULABLE:
        out.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": s.reason,
            }
        )
    if s.restart_required:
        out.append(
            {
                "type": "RestartRequired",
                "status": "True",
                "message": s.restart_message or NOT_LIVE_UPDATABLE,
            }
        )
    return out
