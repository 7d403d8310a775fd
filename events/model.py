"""Events: the facts virtbus records, past tense, one tagged union.

An event never changes meaning: new fields get defaults, an existing field never changes type.
Decisions come from the orchestrator, observations from the node workers; both are events.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar, Final

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True, gc=False):
    """Base of every event; `kind` on the wire is the class name."""

    aggregate: ClassVar[str] = "vm"


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
    restart_required: bool = False


class VMDeleteRequested(Event, frozen=True):
    pass


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


class VMStopRequested(Event, frozen=True):
    grace_period_seconds: int | None = None
    force: bool = False


class VMRestartRequested(Event, frozen=True):
    pass


class VMPauseRequested(Event, frozen=True):
    pass


class VMUnpauseRequested(Event, frozen=True):
    pass


class VMScheduled(Event, frozen=True):
    node: str
    vmi_uid: str
    attempt: int = 0


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
    """The domain is off; `reason` is libvirt's: shutdown, destroyed, crashed, migrated, failed."""

    node: str
    reason: str


class DomainUndefined(Event, frozen=True):
    node: str


# --- VM: migration -------------------------------------------------------------------------------


class MigrationRequested(Event, frozen=True):
    """A migration asked for (KubeVirt's VMIM created, phase Pending); queued until a slot frees."""

    migration: str
    target_node: str = ""  # empty: the scheduler picks
    reason: str = ""  # why, when not a user's request (a node drain)


class MigrationScheduled(Event, frozen=True):
    migration: str
    source: str
    target: str
    live: bool = True


class MigrationTargetPreparing(Event, frozen=True):
    """The target's launcher runs and its node prepares to receive the VM."""

    migration: str
    target: str


class MigrationTargetReady(Event, frozen=True):
    migration: str
    target: str


class MigrationStarted(Event, frozen=True):
    migration: str


class MigrationProgress(Event, frozen=True):
    migration: str
    percent: float
    data_processed: int = 0
    data_remaining: int = 0
    data_total: int = 0
    rate_bps: float = 0.0
    post_copy: bool = False  # switched to post-copy: the guest runs on the target already


class MigrationCancelRequested(Event, frozen=True):
    migration: str


class MigrationSucceeded(Event, frozen=True):
    migration: str
    source: str
    target: str
    duration_ms: float = 0.0
    downtime_ms: float = 0.0
    mode: str = "live"


class MigrationFailed(Event, frozen=True):
    migration: str
    reason: str
    aborted: bool = False


# --- VM: snapshots and volumes -------------------------------------------------------------------


class SnapshotRequested(Event, frozen=True):
    """A VirtualMachineSnapshot: the VM's spec as it is now, and the node that copies `volumes`
    (the persistent ones) beside it; `skipped` names each ephemeral volume left out, and why."""

    snapshot: str
    online: bool = True
    node: str = ""
    spec: dict[str, Any] = {}
    volumes: list[str] = []
    skipped: dict[str, str] = {}


class SnapshotSucceeded(Event, frozen=True):
    snapshot: str
    node: str = ""
    size_bytes: int = 0  # of the volume copies, as allocated on the node


class SnapshotFailed(Event, frozen=True):
    snapshot: str
    reason: str


class SnapshotDeleted(Event, frozen=True):
    snapshot: str
    node: str = ""  # where its copies were, to be removed
    requested: int = 0  # version of the snapshot's request


class RestoreRequested(Event, frozen=True):
    """A VirtualMachineRestore: the snapshot's volumes are copied back on `node`, then the VM's
    spec becomes the snapshot's."""

    snapshot: str
    restore: str
    node: str = ""


class RestoreSucceeded(Event, frozen=True):
    snapshot: str
    restore: str


class RestoreFailed(Event, frozen=True):
    snapshot: str
    restore: str
    reason: str


class VolumeAttachRequested(Event, frozen=True):
    volume: dict[str, Any]
    disk: dict[str, Any]


class VolumeAttached(Event, frozen=True):
    volume: str
    node: str = ""


class VolumeAttachFailed(Event, frozen=True):
    """A hotplug the node could not carry out: the volume is missing, or libvirt refused."""

    volume: str
    reason: str = ""
    node: str = ""


class VolumeDetachRequested(Event, frozen=True):
    volume: str


class VolumeDetached(Event, frozen=True):
    volume: str
    node: str = ""


class ImagePulling(Event, frozen=True):
    """A node lacks a containerDisk image and starts to pull it (kubelet's "Pulling image"):
    the registries it will ask, in order. `ImagePulled` or the start's failure follows."""

    image: str = ""
    node: str = ""
    registries: list[str] = []


class ImagePulled(Event, frozen=True):
    """A node pulled a containerDisk image into its cache before starting the VM: which registry
    served it, and why each one asked before it did not (refused, 404, skipped as unhealthy)."""

    image: str = ""
    digest: str = ""
    registry: str = ""
    node: str = ""
    size_bytes: int = 0
    seconds: float = 0.0
    attempts: list[str] = []


# --- any aggregate -------------------------------------------------------------------------------


class CommandRejected(Event, frozen=True):
    """A command that was not carried out, with the reason and the offending field."""

    aggregate: ClassVar[str] = "*"
    command_id: str
    command: str
    reason: str
    field: str = ""


# --- nodes ---------------------------------------------------------------------------------------


class NodeRegistered(Event, frozen=True):
    aggregate: ClassVar[str] = "node"
    hypervisor: str
    libvirt_uri: str
    cpus: int
    memory_bytes: int
    kvm: bool = False
    labels: dict[str, str] = {}
    pods: str = "process"
    migration_uri: str = ""  # libvirt URI a source connects to for live migration; "" = none


class NodeCordoned(Event, frozen=True):
    aggregate: ClassVar[str] = "node"
    reason: str = ""


class NodeUncordoned(Event, frozen=True):
    aggregate: ClassVar[str] = "node"


class NodeDrainRequested(Event, frozen=True):
    aggregate: ClassVar[str] = "node"


class NodeLost(Event, frozen=True):
    aggregate: ClassVar[str] = "node"
    last_heartbeat: datetime | None = None


# --- replica sets --------------------------------------------------------------------------------


class ReplicaSetCreated(Event, frozen=True):
    aggregate: ClassVar[str] = "rs"
    spec: dict[str, Any]
    replicas: int = 1
    labels: dict[str, str] = {}


class ReplicaSetSpecChanged(Event, frozen=True):
    aggregate: ClassVar[str] = "rs"
    spec: dict[str, Any]
    replicas: int = 1
    labels: dict[str, str] = {}


class ReplicaSetScaled(Event, frozen=True):
    aggregate: ClassVar[str] = "rs"
    replicas: int


class ReplicaSetDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "rs"


# --- volumes and webhooks ------------------------------------------------------------------------


class VolumeCreated(Event, frozen=True):
    aggregate: ClassVar[str] = "volume"
    size_bytes: int
    node: str = ""
    source: str = ""


class VolumeReady(Event, frozen=True):
    aggregate: ClassVar[str] = "volume"
    format: str = "raw"


class VolumeDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "volume"


class VolumeFailed(Event, frozen=True):
    """The node could not provide the volume's data (a bad or interrupted upload, a full disk)."""

    aggregate: ClassVar[str] = "volume"
    reason: str


class VolumeMoveRequested(Event, frozen=True):
    """The volume's data is to be copied to `node` (its VMs follow it there)."""

    aggregate: ClassVar[str] = "volume"
    node: str


class VolumeMoved(Event, frozen=True):
    aggregate: ClassVar[str] = "volume"
    node: str
    from_node: str = ""


class VolumeMoveFailed(Event, frozen=True):
    """The copy did not complete; the volume stays whole where it was."""

    aggregate: ClassVar[str] = "volume"
    reason: str


class WebhookSubscribed(Event, frozen=True):
    aggregate: ClassVar[str] = "webhook"
    url: str
    types: list[str] = msgspec.field(default_factory=lambda: ["io.virtbus.*"])
    vm_pattern: str = "*"
    from_seq: int = 0
    secret_ref: str = ""
    since: datetime | None = None


class WebhookUnsubscribed(Event, frozen=True):
    aggregate: ClassVar[str] = "webhook"


class WebhookDisabled(Event, frozen=True):
    aggregate: ClassVar[str] = "webhook"
    reason: str


# --- audit --------------------------------------------------------------------------------------


class AuditHead(msgspec.Struct, frozen=True, gc=False):
    """One aggregate's head as a checkpoint seals it: its version, stream sequence and hash."""

    version: int
    seq: int
    hash: str


class AuditCheckpoint(Event, frozen=True):
    """A signed seal over the heads of the aggregates that changed since the previous checkpoint.

    A hash chain shows an event changed or removed in the middle, never a log cut short at its
    end: a checkpoint naming a head the stream no longer has does. `signature` is the HMAC of
    `events.checkpoint.signed_bytes`; `previous` is the signature before it, so checkpoints chain.
    """

    aggregate: ClassVar[str] = "audit"
    number: int
    through_seq: int
    heads: dict[str, AuditHead] = {}
    key_id: str = ""
    algorithm: str = "HMAC-SHA256"
    previous: str = ""
    signature: str = ""


AnyEvent = (
    VMCreated | VMSpecChanged | VMDeleteRequested | VMDeleted | VMUndeleted | VMRenamed
    | VMStartRequested | VMStopRequested | VMRestartRequested | VMPauseRequested
    | VMUnpauseRequested | VMScheduled | VMUnschedulable | VMRunning | VMStopped | VMStartFailed
    | VMFailed | VMBackoff | LauncherCreated | LauncherFailed | LauncherDeleted | DomainDefined
    | DomainStarted | DomainPaused | DomainResumed | DomainStopped | DomainUndefined
    | MigrationRequested | MigrationScheduled | MigrationTargetReady | MigrationStarted
    | MigrationProgress | MigrationTargetPreparing
    | MigrationCancelRequested | MigrationSucceeded | MigrationFailed | SnapshotRequested
    | SnapshotSucceeded | SnapshotFailed | SnapshotDeleted | RestoreRequested | RestoreSucceeded
    | RestoreFailed | VolumeAttachRequested | VolumeAttached | VolumeAttachFailed
    | VolumeDetachRequested | VolumeDetached | CommandRejected | NodeRegistered | NodeCordoned
    | NodeUncordoned
    | NodeDrainRequested | NodeLost | ReplicaSetCreated | ReplicaSetSpecChanged | ReplicaSetScaled
    | ReplicaSetDeleted
    | VolumeCreated | VolumeReady | VolumeDeleted | WebhookSubscribed | WebhookUnsubscribed
    | WebhookDisabled
    | VolumeFailed | VolumeMoveRequested | VolumeMoved | VolumeMoveFailed
    | AuditCheckpoint | ImagePulled | ImagePulling
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
