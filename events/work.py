"""Node work items: what the controller asks one node's worker to do, on the work-queue stream.

A work item names the VM, the instance (`vmi_uid`) it is about and the VM version the decision was
taken at, so a worker can drop stale work. Its `Nats-Msg-Id` is derived from those, so a controller
that decides twice (after a crash, or two orchestrators racing) enqueues it once.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from events.model_hotplug import InstanceSize
from events.names import Ref, work_subject


class Tip(msgspec.Struct, frozen=True, gc=False):
    """The VM's newest event as the sender knew it (version, stream sequence, hash): the node
    appends its first observation after it with no lookup. A stale tip costs a conflict and
    then the lookup, never a wrong append: the server checks the sequence."""

    version: int
    seq: int
    hash: str


class Work(msgspec.Struct, frozen=True, kw_only=True, tag_field="action", tag=str.lower, gc=False):
    namespace: str
    name: str
    node: str
    vmi_uid: str
    version: int
    tip: Tip | None = None

    @property
    def ref(self) -> Ref:
        return Ref("vm", self.namespace, self.name)

    @property
    def subject(self) -> str:
        return work_subject(self.node, self.ref)

    @property
    def msg_id(self) -> str:
        return f"{self.vmi_uid}:{type(self).__name__.lower()}:{self.version}"


class Start(Work, frozen=True):
    """Create the launcher and define and start the domain from `spec` (a VM spec); `ip` and
    `mac` are the instance's on the VM network (events/model_network.py), "" where none; `cidr`
    the pool's network (a `bridge` guest's prefix and gateway)."""

    spec: dict[str, Any]
    ip: str = ""
    mac: str = ""
    cidr: str = ""


class Stop(Work, frozen=True):
    grace_period_seconds: int = 30
    force: bool = False


class Pause(Work, frozen=True):
    pass


class Unpause(Work, frozen=True):
    pass


class SoftReboot(Work, frozen=True):
    """Ask the guest to reboot: through its agent when one is connected, else by ACPI."""


class Reset(Work, frozen=True):
    """Reset the running domain (virDomainReset); `version` is the reset request's."""


class DumpMemory(Work, frozen=True):
    """Dump the running domain's memory into claim `claim`; `version` is the request's."""

    claim: str


class VolumeWork(Work, frozen=True):
    """A hotplug item: `volume` and `disk` as the request named them, `version` the request's."""

    volume: dict[str, Any]
    disk: dict[str, Any] = {}

    @property
    def volume_name(self) -> str:
        return str(self.volume.get("name", ""))

    @property
    def msg_id(self) -> str:
        return f"{self.vmi_uid}:{type(self).__name__.lower()}:{self.volume_name}:{self.version}"


class AttachVolume(VolumeWork, frozen=True):
    """Attach `volume` to the running domain as `disk` (live and in its definition)."""


class DetachVolume(VolumeWork, frozen=True):
    """Detach the disk backed by `volume` from the running domain."""


class Resize(Work, frozen=True):
    """Plug CPU sockets (`sockets`, 0: unchanged) and guest memory (`guest` bytes, 0: unchanged)
    into the running domain, which booted as `size` says; `version` is the request's."""

    sockets: int = 0
    guest: int = 0
    size: InstanceSize = InstanceSize()

    @property
    def msg_id(self) -> str:
        return f"{self.vmi_uid}:resize:{self.sockets}:{self.guest}:{self.version}"


class SnapshotWork(Work, frozen=True):
    """About one snapshot, on the node that holds its copies; `version` is the version of the
    snapshot's request (a name may be used again after a delete), `spec` the snapshot's VM spec."""

    snapshot: str
    spec: dict[str, Any] = {}
    volumes: list[str] = []

    @property
    def msg_id(self) -> str:
        kind = type(self).__name__.lower()
        return f"{self.namespace}/{self.name}:{kind}:{self.snapshot}:{self.version}"


class TakeSnapshot(SnapshotWork, frozen=True):
    """Copy `volumes` beside the snapshot; a running domain is paused for the copy."""


class RestoreSnapshot(SnapshotWork, frozen=True):
    """Copy the snapshot's volumes back over the (stopped) VM's."""

    restore: str = ""

    @property
    def msg_id(self) -> str:
        # One snapshot may be restored many times: without the restore's name, a second restore's
        # item had the first one's id, the bus dropped it as a duplicate and the restore hung.
        return f"{super().msg_id}:{self.restore}"


class RemoveSnapshot(SnapshotWork, frozen=True):
    """Delete the snapshot's copies."""


class VolumeData(Work, frozen=True, kw_only=True):
    """Work on a volume's data on its node (not on a VM): `version` is the deciding event's."""

    vmi_uid: str = ""

    @property
    def ref(self) -> Ref:
        return Ref("volume", self.namespace, self.name)

    @property
    def msg_id(self) -> str:
        return f"volume:{self.namespace}:{self.name}:{type(self).__name__.lower()}:{self.version}"


class ProvisionVolume(VolumeData, frozen=True, kw_only=True):
    """Create the volume's directory; a blank one (`source` "") gets its sparse `disk.img`."""

    size_bytes: int
    source: str = ""
    attempt: int = 0  # the fills that failed before this one (each try is work of its own)

    @property
    def msg_id(self) -> str:
        return f"{super().msg_id}:{self.attempt}" if self.attempt else super().msg_id


class RemoveVolume(VolumeData, frozen=True):
    """Delete the volume's directory and data."""


class MoveVolume(VolumeData, frozen=True, kw_only=True):
    """Copy the volume's data here (`node`) from `source_node`, over the bus."""

    source_node: str
    size_bytes: int


class MigrationPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """KubeVirt's migration settings (`spec.configuration.migrations`), with its defaults."""

    bandwidth_bytes: int = 64 << 20  # bandwidthPerMigration 64Mi (per second)
    completion_timeout_per_gib: int = 150  # completionTimeoutPerGiB
    allow_auto_converge: bool = False
    allow_post_copy: bool = False
    max_downtime_ms: int = 300  # QEMU's downtime-limit default, which KubeVirt leaves as is
    parallel_per_cluster: int = 5  # parallelMigrationsPerCluster
    parallel_outbound_per_node: int = 2  # parallelOutboundMigrationsPerNode


class MigrationWork(Work, frozen=True):
    """One step of migration `migration` of the instance from `source` to `target`."""

    migration: str
    source: str
    target: str
    live: bool = True  # False: a cold move (the guest restarts on the target)

    @property
    def msg_id(self) -> str:
        return f"{self.vmi_uid}:{type(self).__name__.lower()}:{self.migration}"


class PrepareTarget(MigrationWork, frozen=True):
    """On the target: the launcher, then ready to receive (cold: define and start there too)."""

    spec: dict[str, Any] = {}


class MigrateSource(MigrationWork, frozen=True):
    """On the source: migrate to `target_uri` under `policy` (cold: destroy the source copy)."""

    target_uri: str = ""
    policy: MigrationPolicy = MigrationPolicy()


class AbortMigration(MigrationWork, frozen=True):
    """On the source: abort the running migration job (handled at once, not queued)."""

    reason: str = ""  # why, when not the user's migrate-cancel (a stop, a delete)


class CleanupTarget(MigrationWork, frozen=True):
    """On the target of a failed migration: remove the launcher and any leftover domain."""


AnyWork = (
    Start | Stop | Pause | Unpause | SoftReboot | Reset | DumpMemory | AttachVolume | DetachVolume
    | Resize | TakeSnapshot | RestoreSnapshot | RemoveSnapshot | ProvisionVolume | RemoveVolume
    | MoveVolume | PrepareTarget | MigrateSource | AbortMigration | CleanupTarget
)  # fmt: skip
WORK_DECODER: Final = msgspec.json.Decoder(AnyWork)
