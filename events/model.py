"""Events: the facts virtbus records, past tense, one tagged union.

An event never changes meaning: new fields get defaults, an existing field never changes type.
Decisions come from the orchestrator, observations from the node workers; both are events. This
module holds a VM's definition and lifecycle events and gathers every event into the union
(`AnyEvent`), whose subject tokens and CloudEvents types it computes; the events of the other
concepts live beside it (`events/model_*.py`) and are used through it, as `m.MigrationScheduled`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

from events.event import Event
from events.model_aggregates import (
    AuditCheckpoint,
    AuditHead,
    ClusterInstancetypeApplied,
    ClusterInstancetypeDeleted,
    ClusterPreferenceApplied,
    ClusterPreferenceDeleted,
    DataSourceApplied,
    DataSourceDeleted,
    InstancetypeApplied,
    InstancetypeDeleted,
    KubeVirtApplied,
    MigrationPolicyApplied,
    MigrationPolicyDeleted,
    NodeCordoned,
    NodeDrainRequested,
    NodeLost,
    NodeRegistered,
    NodeUncordoned,
    PreferenceApplied,
    PreferenceDeleted,
    ReplicaSetCreated,
    ReplicaSetDeleted,
    ReplicaSetScaled,
    ReplicaSetSpecChanged,
    UserAdded,
    UserRevoked,
    VMPoolCreated,
    VMPoolDeleted,
    VMPoolScaled,
    VMPoolSpecChanged,
    VMPoolStatePreserved,
    VMPoolStateReused,
    VMPoolVMReplaced,
    VolumeAdopted,
    VolumeCreated,
    VolumeDeleted,
    VolumeFailed,
    VolumeLabeled,
    VolumeMoved,
    VolumeMoveFailed,
    VolumeMoveRequested,
    VolumeNodeSelected,
    VolumePopulationFailed,
    VolumeProgress,
    VolumeReady,
    VolumeReleased,
    WebhookDisabled,
    WebhookSubscribed,
    WebhookUnsubscribed,
)
from events.model_guest import (
    MemoryDumpCompleted,
    MemoryDumpFailed,
    MemoryDumpRemoved,
    MemoryDumpRequested,
    ServiceCreated,
    ServiceDeleted,
    SoftRebootSent,
    VMResetRequested,
    VMSoftRebootRequested,
)
from events.model_hotplug import (
    GuestMemoryPlugged,
    HotChangeFailed,
    HotMemoryChanged,
    HotMemoryChangeRequested,
    HotVCPUChanged,
    HotVCPUChangeRequested,
    InstanceSize,
    InstancetypeRevisionCaptured,
    VMRestartRequired,
    VolumeAttached,
    VolumeAttachFailed,
    VolumeAttachRequested,
    VolumeDetached,
    VolumeDetachRequested,
)
from events.model_images import ImagePulled, ImagePulling
from events.model_migration import (
    MigrationCancelRequested,
    MigrationFailed,
    MigrationProgress,
    MigrationRequested,
    MigrationScheduled,
    MigrationStarted,
    MigrationSucceeded,
    MigrationTargetPreparing,
    MigrationTargetReady,
)
from events.model_network import IPAllocated, IPReleased
from events.model_snapshot import (
    RestoreFailed,
    RestoreRequested,
    RestoreSucceeded,
    SnapshotDeleted,
    SnapshotFailed,
    SnapshotRequested,
    SnapshotSucceeded,
)

# The contract's event namespace: the union's members from the modules above are used as `m.X`.
__all__ = [
    "CE_TYPE", "EVENT_BY_NAME", "EVENT_CLASSES", "TOKEN", "AnyEvent", "AuditCheckpoint",
    "AuditHead", "ClusterInstancetypeApplied", "ClusterInstancetypeDeleted",
    "ClusterPreferenceApplied", "ClusterPreferenceDeleted", "CommandRejected",
    "DataSourceApplied", "DataSourceDeleted", "DomainDefined",
    "DomainPaused", "DomainRebooted", "DomainResumed", "DomainStarted", "DomainStopped",
    "DomainUndefined", "Event", "GuestAgentChanged", "GuestMemoryPlugged", "HotChangeFailed",
    "HotMemoryChangeRequested",
    "HotMemoryChanged", "HotVCPUChangeRequested", "HotVCPUChanged", "IPAllocated", "IPReleased",
    "ImagePulled", "ImagePulling", "InstanceSize", "InstancetypeApplied", "InstancetypeDeleted",
    "InstancetypeRevisionCaptured", "KubeVirtApplied", "LauncherCreated", "LauncherDeleted",
    "LauncherFailed", "MemoryDumpCompleted", "MemoryDumpFailed", "MemoryDumpRemoved",
    "MemoryDumpRequested", "MigrationCancelRequested", "MigrationFailed",
    "MigrationPolicyApplied", "MigrationPolicyDeleted", "MigrationProgress",
    "MigrationRequested", "MigrationScheduled", "MigrationStarted", "MigrationSucceeded",
    "MigrationTargetPreparing", "MigrationTargetReady", "NodeCordoned", "NodeDrainRequested",
    "NodeLost", "NodeRegistered", "NodeUncordoned", "PreferenceApplied", "PreferenceDeleted",
    "ReplicaSetCreated", "ReplicaSetDeleted", "ReplicaSetScaled", "ReplicaSetSpecChanged",
    "RestoreFailed", "RestoreRequested", "RestoreSucceeded", "ServiceCreated", "ServiceDeleted",
    "SnapshotDeleted", "SnapshotFailed", "SnapshotRequested", "SnapshotSucceeded", "SoftRebootSent",
    "UserAdded", "UserRevoked", "VMBackoff", "VMCreated", "VMDeleteRequested", "VMDeleted",
    "VMFailed", "VMPauseRequested", "VMPoolCreated", "VMPoolDeleted", "VMPoolScaled",
    "VMPoolSpecChanged", "VMPoolStatePreserved", "VMPoolStateReused", "VMPoolVMReplaced",
    "VMRenamed", "VMResetRequested", "VMRestartRequested", "VMRestartRequired", "VMRunning",
    "VMScheduled", "VMSoftRebootRequested", "VMSpecChanged", "VMStartFailed", "VMStartRequested",
    "VMStopRequested", "VMStopped", "VMUndeleted", "VMUnpauseRequested", "VMUnschedulable",
    "VolumeAdopted", "VolumeAttachFailed", "VolumeAttachRequested", "VolumeAttached",
    "VolumeCreated", "VolumeDeleted", "VolumeDetachRequested", "VolumeDetached", "VolumeFailed",
    "VolumeLabeled", "VolumeMoveFailed", "VolumeMoveRequested", "VolumeMoved", "VolumeNodeSelected",
    "VolumePopulationFailed", "VolumeProgress", "VolumeReady", "VolumeReleased", "WebhookDisabled",
    "WebhookSubscribed", "WebhookUnsubscribed",
]  # fmt: skip


# --- VM: definition -------------------------------------------------------------------------------


class VMCreated(Event, frozen=True):
    spec: dict[str, Any]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    run_strategy: str = "Halted"
    source_kind: str = "VirtualMachine"
    renamed_from: str = ""  # the VM's name before a rename (its history is there)
    # Created starting (an autostart run strategy): one event where a VMStartRequested would
    # follow, because a JetStream atomic batch of two costs milliseconds and serializes.
    start: bool = False


class VMSpecChanged(Event, frozen=True):
    spec: dict[str, Any]
    changed: list[str] = []
    run_strategy: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None  # None: as they were
    restart_required: bool = False


class VMDeleteRequested(Event, frozen=True):
    reason: str = ""  # who asked, when not its user (a pool scaling in, remaking it)


class VMDeleted(Event, frozen=True):
    disks: list[str] = []


class VMUndeleted(Event, frozen=True):
    pass


class VMRenamed(Event, frozen=True):
    """This name's life ends: the VM goes on as `to`, whose history starts with a `VMCreated`
    naming this one (`renamed_from`); both are written in one atomic append."""

    to: str


# --- VM: lifecycle decisions ---------------------------------------------------------------------


class VMStartRequested(Event, frozen=True):
    restart: bool = False  # the controller restarting per run strategy, not a user's start
    paused: bool = False  # `start --paused`: the instance is paused as soon as it runs


class VMStopRequested(Event, frozen=True):
    grace_period_seconds: int | None = None
    force: bool = False


class VMRestartRequested(Event, frozen=True):
    grace_period_seconds: int | None = None
    force: bool = False


class VMPauseRequested(Event, frozen=True):
    pass


class VMUnpauseRequested(Event, frozen=True):
    pass


class VMScheduled(Event, frozen=True):
    node: str
    vmi_uid: str
    attempt: int = 0
    size: InstanceSize | None = None  # what the instance boots with (None: before hotplug)


class VMUnschedulable(Event, frozen=True):
    reason: str


class VMRunning(Event, frozen=True):
    node: str


class VMStopped(Event, frozen=True):
    reason: str = ""


class VMStartFailed(Event, frozen=True):
    """A start that cannot proceed; `status` is KubeVirt's printable status (ErrorPvcNotFound)."""

    reason: str
    status: str = "Unknown"
    node: str = ""


class VMFailed(Event, frozen=True):
    """The running instance is gone against the user's wish (crash, node lost, launcher died)."""

    reason: str
    node: str = ""


class VMBackoff(Event, frozen=True):
    """Restart delayed after repeated failures: KubeVirt's CrashLoopBackOff."""

    delay_seconds: float
    failures: int


# --- VM: observations from the node --------------------------------------------------------------


class LauncherCreated(Event, frozen=True):
    node: str
    pod: str


class LauncherFailed(Event, frozen=True):
    node: str
    pod: str
    reason: str
    exit_code: int | None = None


class LauncherDeleted(Event, frozen=True):
    node: str
    pod: str


class DomainDefined(Event, frozen=True):
    node: str
    domain_uuid: str = ""


class DomainStarted(Event, frozen=True):
    node: str
    reason: str = "booted"


class DomainPaused(Event, frozen=True):
    node: str
    reason: str = "user"


class DomainResumed(Event, frozen=True):
    node: str
    reason: str = "unpaused"


class DomainStopped(Event, frozen=True):
    """The domain is off; `reason` is libvirt's: shutdown, destroyed, crashed, migrated, failed;
    `detail` how a crashed guest crashed (libvirt's crash reason: panicked, from pvpanic)."""

    node: str
    reason: str
    detail: str = ""


class DomainRebooted(Event, frozen=True):
    """The guest rebooted (its own `reboot`, or a reset): the same instance runs on, no stop;
    `reset` is the version of the `VMResetRequested` this reset carried out (0: the guest's own)."""

    node: str
    reset: int = 0


class GuestAgentChanged(Event, frozen=True):
    """The guest agent's channel connected (the agent in the guest answers) or disconnected."""

    node: str
    connected: bool


class DomainUndefined(Event, frozen=True):
    node: str


# --- any aggregate -------------------------------------------------------------------------------


class CommandRejected(Event, frozen=True):
    """A command that was not carried out, with the reason and the offending field."""

    aggregate: ClassVar[str] = "*"
    command_id: str
    command: str
    reason: str
    field: str = ""


AnyEvent = (
    VMCreated | VMSpecChanged | VMDeleteRequested | VMDeleted | VMUndeleted | VMRenamed
    | VMStartRequested | VMStopRequested | VMRestartRequested | VMPauseRequested
    | VMUnpauseRequested | VMResetRequested | VMScheduled | VMUnschedulable | VMRunning | VMStopped
    | VMStartFailed | VMFailed | VMBackoff | LauncherCreated | LauncherFailed | LauncherDeleted
    | DomainDefined | DomainStarted | DomainPaused | DomainResumed | DomainStopped | DomainUndefined
    | DomainRebooted | GuestAgentChanged | IPAllocated | IPReleased | VMSoftRebootRequested
    | SoftRebootSent | MemoryDumpRequested | MemoryDumpCompleted | MemoryDumpFailed
    | MemoryDumpRemoved | ServiceCreated | ServiceDeleted | MigrationRequested | MigrationScheduled
    | MigrationTargetReady | MigrationStarted | MigrationProgress | MigrationTargetPreparing
    | MigrationCancelRequested | MigrationSucceeded | MigrationFailed | SnapshotRequested
    | SnapshotSucceeded | SnapshotFailed | SnapshotDeleted | RestoreRequested | RestoreSucceeded
    | RestoreFailed | VolumeAttachRequested | VolumeAttached | VolumeAttachFailed
    | VolumeDetachRequested | VolumeDetached | HotVCPUChangeRequested | HotVCPUChanged
    | HotMemoryChangeRequested | HotMemoryChanged | GuestMemoryPlugged | HotChangeFailed
    | VMRestartRequired
    | InstancetypeRevisionCaptured | CommandRejected | NodeRegistered | NodeCordoned
    | NodeUncordoned | NodeDrainRequested | NodeLost | ReplicaSetCreated | ReplicaSetSpecChanged
    | ReplicaSetScaled | ReplicaSetDeleted | VMPoolCreated | VMPoolSpecChanged | VMPoolScaled
    | VMPoolDeleted | VMPoolStatePreserved | VMPoolStateReused | VMPoolVMReplaced | KubeVirtApplied
    | MigrationPolicyApplied | MigrationPolicyDeleted
    | VolumeCreated | VolumeReady | VolumeDeleted | VolumeReleased | VolumeAdopted
    | WebhookSubscribed | WebhookUnsubscribed | WebhookDisabled | VolumeFailed | VolumeMoveRequested
    | VolumeMoved | VolumeMoveFailed | VolumeNodeSelected | VolumeProgress | VolumeLabeled
    | VolumePopulationFailed | InstancetypeApplied | InstancetypeDeleted
    | ClusterInstancetypeApplied
    | ClusterInstancetypeDeleted | PreferenceApplied | PreferenceDeleted | ClusterPreferenceApplied
    | ClusterPreferenceDeleted | AuditCheckpoint | ImagePulled | ImagePulling | UserAdded
    | UserRevoked | DataSourceApplied | DataSourceDeleted
)  # fmt: skip

EVENT_CLASSES: Final[tuple[type[Event], ...]] = AnyEvent.__args__


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


_PREFIX: Final = {
    "vm": "vm_",
    "node": "node_",
    "rs": "replica_set_",
    "volume": "volume_",
    "webhook": "webhook_",
    "audit": "audit_",
    "user": "user_",
    "instancetype": "instancetype_",
    "clusterinstancetype": "cluster_instancetype_",
    "preference": "preference_",
    "clusterpreference": "cluster_preference_",
    "vmpool": "vm_pool_",
    "kubevirt": "kube_virt_",
    "service": "service_",
    "datasource": "data_source_",
}


def _token(cls: type[Event]) -> str:
    return _snake(cls.__name__).removeprefix(_PREFIX.get(cls.aggregate, ""))


def _ce_type(cls: type[Event]) -> str:
    if cls.aggregate == "*":
        return "io.virtbus.command.rejected.v1"
    return f"io.virtbus.{cls.aggregate}.{_token(cls)}.v1"


# Subject token and CloudEvents type of each event class, computed once.
TOKEN: Final[dict[type[Event], str]] = {c: _token(c) for c in EVENT_CLASSES}
CE_TYPE: Final[dict[type[Event], str]] = {c: _ce_type(c) for c in EVENT_CLASSES}
EVENT_BY_NAME: Final[dict[str, type[Event]]] = {c.__name__: c for c in EVENT_CLASSES}
