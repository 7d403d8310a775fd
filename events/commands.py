"""Commands: what a client asks for, imperative, one tagged union any NATS client can publish as JSON.

A command changes nothing by itself: the orchestrator folds the target, validates the command
against that state and appends either decision events or a `CommandRejected`, both carrying the
command's `id` as their `correlationid`.
"""

from __future__ import annotations

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


class ApplyVM(Command):
    """Create or update a VM from a KubeVirt manifest's spec (VirtualMachine or VMI)."""

    spec: dict[str, Any]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    source_kind: str = "VirtualMachine"


class StartVM(Command):
    pass


class StopVM(Command):
    grace_period_seconds: GracePeriod | None = None
    force: bool = False


class RestartVM(Command):
    pass


class PauseVM(Command):
    pass


class UnpauseVM(Command):
    pass


class DeleteVM(Command):
    pass


class UndeleteVM(Command):
    pass


class MigrateVM(Command):
    target_node: Name | None = None
    migration: str = ""


class CancelMigration(Command):
    pass


class SnapshotVM(Command):
    snapshot: Name


class RestoreVM(Command):
    snapshot: Name
    restore: str = ""


class DeleteSnapshot(Command):
    snapshot: Name


class AddVolume(Command):
    volume: dict[str, Any]
    disk: dict[str, Any] = {}


class RemoveVolume(Command):
    volume: Name


# --- replica sets --------------------------------------------------------------------------------


class ApplyReplicaSet(Command):
    aggregate: ClassVar[str] = "rs"
    spec: dict[str, Any]
    labels: dict[str, str] = {}


class ScaleReplicaSet(Command):
    aggregate: ClassVar[str] = "rs"
    replicas: Replicas


class DeleteReplicaSet(Command):
    aggregate: ClassVar[str] = "rs"


# --- nodes ---------------------------------------------------------------------------------------


class DrainNode(Command):
    aggregate: ClassVar[str] = "node"


class UncordonNode(Command):
    aggregate: ClassVar[str] = "node"


# --- volumes and webhooks ------------------------------------------------------------------------


class CreateVolume(Command):
    aggregate: ClassVar[str] = "volume"
    size: str
    node: Name | None = None


class DeleteVolume(Command):
    aggregate: ClassVar[str] = "volume"


class AddWebhook(Command):
    aggregate: ClassVar[str] = "webhook"
    url: str
    types: list[str] = msgspec.field(default_factory=lambda: ["io.virtbus.*"])
    vm_pattern: str = "*"
    from_start: bool = False
    secret: str = ""


class RemoveWebhook(Command):
    aggregate: ClassVar[str] = "webhook"


AnyCommand = (
    ApplyVM | StartVM | StopVM | RestartVM | PauseVM | UnpauseVM | DeleteVM | UndeleteVM
    | MigrateVM | CancelMigration | SnapshotVM | RestoreVM | DeleteSnapshot | AddVolume
    | RemoveVolume | ApplyReplicaSet | ScaleReplicaSet | DeleteReplicaSet | DrainNode
    | UncordonNode | CreateVolume | DeleteVolume | AddWebhook | RemoveWebhook
)  # fmt: skip

COMMAND_CLASSES: Final[tuple[type[Command], ...]] = AnyCommand.__args__  # type: ignore[attr-defined]
