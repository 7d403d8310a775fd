"""Commands: what a client asks for, imperative; one tagged union any NATS client can publish.

A command changes nothing by itself: the orchestrator folds the target, validates the command
against that state and appends either decision events or a `CommandRejected`, both carrying the
command's `id` as their `correlationid`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Final

import msgspec

from events.names import DEFAULT_NAMESPACE, Name, Ref

Replicas = Annotated[int, msgspec.Meta(ge=0, le=10_000)]
GracePeriod = Annotated[int, msgspec.Meta(ge=0, le=86_400)]


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True):
    """Base of every command; `kind` on the wire is the class name.

    `id` makes a command idempotent: publish the same id twice and it is carried out once. A client
    that leaves it empty gets one assigned (the command stream's sequence number).
    """

    aggregate: ClassVar[str] = "vm"
    id: str = ""
    name: Name
    namespace: Name = DEFAULT_NAMESPACE
    actor: str = ""

    @property
    def target(self) -> Ref:
        return Ref.of(self.aggregate, self.name, self.namespace)


# --- VMs -----------------------------------------------------------------------------------------


class ApplyVM(Command, frozen=True):
    """Create or update a VM from a KubeVirt manifest's spec (VirtualMachine or VMI)."""

    spec: dict[str, Any]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    source_kind: str = "VirtualMachine"
    create_only: bool = False  # `kubectl create`: refused (AlreadyExists) when it exists
    expected_version: int = 0  # a patch: refused (Conflict) unless the VM is at this version


class StartVM(Command, frozen=True):
    paused: bool = False  # `virtctl start --paused`: the VMI starts paused


class StopVM(Command, frozen=True):
    grace_period_seconds: GracePeriod | None = None
    force: bool = False


class RestartVM(Command, frozen=True):
    grace_period_seconds: GracePeriod | None = None  # how the old instance is stopped
    force: bool = False


class PauseVM(Command, frozen=True):
    pass


class UnpauseVM(Command, frozen=True):
    pass


class SoftRebootVM(Command, frozen=True):
    """virtctl's soft-reboot: the guest reboots itself, asked through its agent, or by ACPI
    when no agent is connected (KubeVirt's fallback)."""


class ResetVM(Command, frozen=True):
    """A hard reset of the running instance (virtctl reset): the guest restarts at once, as the
    reset button does; the instance, its address and its node stay."""


class MemoryDumpVM(Command, frozen=True):
    """Dump the running instance's memory into the claim `claim` (virtctl memory-dump get); no
    claim: the one already associated (KubeVirt's dump again into the same claim)."""

    claim: str = ""


class RemoveMemoryDump(Command, frozen=True):
    """Dissociate the VM's memory dump claim (virtctl memory-dump remove); the claim stays."""


class DeleteVM(Command, frozen=True):
    pass


class UndeleteVM(Command, frozen=True):
    pass


class RenameVM(Command, frozen=True):
    """virtctl's rename (KubeVirt had it until 1.0): a stopped VM goes on under `new_name`."""

    new_name: Name


class MigrateVM(Command, frozen=True):
    target_node: Name | None = None
    migration: str = ""
    # A VirtualMachineInstanceMigration applied: virt-api's admission of that object, about the
    # VMI `name` (none, or one that ended, is refused), rather than virtctl's verb on a VM.
    vmim: bool = False


class CancelMigration(Command, frozen=True):
    pass


class SnapshotVM(Command, frozen=True):
    snapshot: Name


class RestoreVM(Command, frozen=True):
    snapshot: Name
    restore: str = ""


class DeleteSnapshot(Command, frozen=True):
    snapshot: Name


class AddVolume(Command, frozen=True):
    """Hotplug a volume as a disk (`virtctl addvolume`); `persist` also adds it to the VM spec."""

    volume: dict[str, Any]
    disk: dict[str, Any] = {}
    persist: bool = False


class RemoveVolume(Command, frozen=True):
    """Unplug a volume (`virtctl removevolume`); `persist` also removes it from the VM spec."""

    volume: Name
    persist: bool = False


# --- services ------------------------------------------------------------------------------------


class CreateService(Command, frozen=True):
    """A Service for a VM's ports (`virtctl expose`); `spec` is Kubernetes' ServiceSpec."""

    aggregate: ClassVar[str] = "service"
    spec: dict[str, Any]
    vm: Name
    vm_kind: str = "VirtualMachine"


class DeleteService(Command, frozen=True):
    aggregate: ClassVar[str] = "service"


# --- replica sets --------------------------------------------------------------------------------


class ApplyReplicaSet(Command, frozen=True):
    aggregate: ClassVar[str] = "rs"
    spec: dict[str, Any]
    labels: dict[str, str] = {}
    create_only: bool = False
    expected_version: int = 0


class ScaleReplicaSet(Command, frozen=True):
    aggregate: ClassVar[str] = "rs"
    replicas: Replicas


class DeleteReplicaSet(Command, frozen=True):
    aggregate: ClassVar[str] = "rs"


# VirtualMachinePool (pool.kubevirt.io): judged and reconciled as a replica set of VMs.


class ApplyVMPool(ApplyReplicaSet, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


class ScaleVMPool(ScaleReplicaSet, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


class DeleteVMPool(DeleteReplicaSet, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


# --- the KubeVirt configuration (admin only) ----------------------------------------------------


class ApplyKubeVirt(Command, frozen=True):
    """Create or change the KubeVirt object (`kind: KubeVirt`): the cluster's configuration."""

    aggregate: ClassVar[str] = "kubevirt"
    spec: dict[str, Any]
    labels: dict[str, str] = {}
    expected_version: int = 0  # a patch: refused (Conflict) unless the object is at this version


# --- nodes ---------------------------------------------------------------------------------------


class DrainNode(Command, frozen=True):
    aggregate: ClassVar[str] = "node"


class UncordonNode(Command, frozen=True):
    aggregate: ClassVar[str] = "node"


# --- volumes and webhooks ------------------------------------------------------------------------


class CreateVolume(Command, frozen=True):
    """A volume (PVC) of `size` on `node`; `source` "upload" or a URL: its data comes by bus;
    "import:URL", "registry:IMAGE", "clone:NAME": the node fills it (a DataVolume's sources).
    Without a node and a source it binds late (WaitForFirstConsumer). `apply`: a claim that
    exists with this spec is left unchanged rather than refused (kubectl apply)."""

    aggregate: ClassVar[str] = "volume"
    size: str
    node: Name | None = None
    source: str = ""
    apply: bool = False
    access_modes: list[str] = []
    storage_class: str = ""
    data_volume: bool = False
    owner: str = ""
    labels: dict[str, str] = {}  # the claim's (a VM infers its instance type from them)
    expected_version: int = 0  # `label pvc`: refused (Conflict) unless the claim is at this version


class DeleteVolume(Command, frozen=True):
    aggregate: ClassVar[str] = "volume"


class MoveVolume(Command, frozen=True):
    """Copy a Bound volume to `node` and drop it where it was; no running VM may use it."""

    aggregate: ClassVar[str] = "volume"
    node: Name


class AddWebhook(Command, frozen=True):
    aggregate: ClassVar[str] = "webhook"
    url: str
    types: list[str] = msgspec.field(default_factory=lambda: ["io.virtbus.*"])
    vm_pattern: str = "*"
    from_start: bool = False
    secret: str = ""  # inline secrets stay in VIRT_COMMANDS: prefer `secret_ref` (a KV key)
    secret_ref: str = ""
    since: datetime | None = None


class RemoveWebhook(Command, frozen=True):
    aggregate: ClassVar[str] = "webhook"


# --- instance types and preferences ------------------------------------------------------------


class ApplyInstancetype(Command, frozen=True):
    """Create or replace a VirtualMachineInstancetype (its subclasses: the other three kinds)."""

    aggregate: ClassVar[str] = "instancetype"
    spec: dict[str, Any]
    labels: dict[str, str] = {}
    create_only: bool = False
    expected_version: int = 0  # a patch: refused (Conflict) unless the object is at this version


class DeleteInstancetype(Command, frozen=True):
    aggregate: ClassVar[str] = "instancetype"


class ApplyMigrationPolicy(Command, frozen=True):
    """Create or replace a MigrationPolicy (events/migration_policies.py); cluster-wide."""

    aggregate: ClassVar[str] = "migrationpolicy"
    spec: dict[str, Any]
    labels: dict[str, str] = {}
    create_only: bool = False
    expected_version: int = 0


class DeleteMigrationPolicy(Command, frozen=True):
    aggregate: ClassVar[str] = "migrationpolicy"


class ApplyClusterInstancetype(ApplyInstancetype, frozen=True):
    aggregate: ClassVar[str] = "clusterinstancetype"


class DeleteClusterInstancetype(DeleteInstancetype, frozen=True):
    aggregate: ClassVar[str] = "clusterinstancetype"


class ApplyPreference(ApplyInstancetype, frozen=True):
    aggregate: ClassVar[str] = "preference"


class DeletePreference(DeleteInstancetype, frozen=True):
    aggregate: ClassVar[str] = "preference"


class ApplyClusterPreference(ApplyInstancetype, frozen=True):
    aggregate: ClassVar[str] = "clusterpreference"


class DeleteClusterPreference(DeleteInstancetype, frozen=True):
    aggregate: ClassVar[str] = "clusterpreference"


# --- CDI DataSources --------------------------------------------------------------------------


class ApplyDataSource(Command, frozen=True):
    """Create or replace a DataSource (cdi.kubevirt.io/v1beta1); `spec` is CDI's DataSourceSpec."""

    aggregate: ClassVar[str] = "datasource"
    spec: dict[str, Any]
    labels: dict[str, str] = {}
    create_only: bool = False
    expected_version: int = 0


class DeleteDataSource(Command, frozen=True):
    aggregate: ClassVar[str] = "datasource"


# --- users (admin only) ---------------------------------------------------------------------------


class AddUser(Command, frozen=True):
    """Admit a user (or a node) to the bus: the orchestrator signs a JWT for `public_key` with
    the role's permissions; the seed stays with whoever made the key pair."""

    aggregate: ClassVar[str] = "user"
    role: str
    public_key: Annotated[
        str, msgspec.Meta(pattern=r"^U[A-Z2-7]{55}$", min_length=56, max_length=56)
    ]
    namespaces: list[Name] = []


class RevokeUser(Command, frozen=True):
    aggregate: ClassVar[str] = "user"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a command: the reply of the API door, and on `virt.outcome.<id>`."""

    command_id: str
    accepted: bool
    reason: str = ""
    field: str = ""
    version: int = 0
    events: list[str] = []
    duplicate: bool = False


AnyCommand = (
    ApplyVM | StartVM | StopVM | RestartVM | PauseVM | UnpauseVM | ResetVM | DeleteVM | UndeleteVM
    | SoftRebootVM | MemoryDumpVM | RemoveMemoryDump | CreateService | DeleteService
    | MigrateVM | CancelMigration | SnapshotVM | RestoreVM | DeleteSnapshot | AddVolume
    | RemoveVolume | ApplyReplicaSet | ScaleReplicaSet | DeleteReplicaSet | DrainNode
    | UncordonNode | CreateVolume | DeleteVolume | AddWebhook | RemoveWebhook
    | MoveVolume | RenameVM | AddUser | RevokeUser | ApplyInstancetype | DeleteInstancetype
    | ApplyMigrationPolicy | DeleteMigrationPolicy
    | ApplyClusterInstancetype | DeleteClusterInstancetype | ApplyPreference | DeletePreference
    | ApplyClusterPreference | DeleteClusterPreference | ApplyVMPool | ScaleVMPool | DeleteVMPool
    | ApplyKubeVirt | ApplyDataSource | DeleteDataSource
)  # fmt: skip

COMMAND_CLASSES: Final[tuple[type[Command], ...]] = AnyCommand.__args__
