"""The events of the aggregates beside the VM: nodes, replica sets and pools, volumes, webhook
subscriptions, the KubeVirt configuration and audit checkpoints.

Part of the event union (`events/model.py`; use them as `m.NodeLost` through it). Each class's
`aggregate` names its subject tree (`virt.<aggregate>.…`); the folds are `events/nodes.py`,
`events/replicasets.py`, `events/volumes.py`, `events/kubevirt.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec

from events.event import Event

# --- nodes ----------------------------------------------------------------------------------------


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


# --- replica sets ---------------------------------------------------------------------------------


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


# VirtualMachinePool (pool.kubevirt.io): a replica set of VMs, folded by the same fold.


class VMPoolCreated(ReplicaSetCreated, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


class VMPoolSpecChanged(ReplicaSetSpecChanged, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


class VMPoolScaled(ReplicaSetScaled, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


class VMPoolDeleted(ReplicaSetDeleted, frozen=True):
    aggregate: ClassVar[str] = "vmpool"


# What a pool did to its VMs' disks (KubeVirt's pool controller): the pool's history says it.


class VMPoolStatePreserved(Event, frozen=True):
    """Scaling in removed `vm` but kept its DataVolumes `volumes` (`scaleInStrategy.<strategy>.
    statePreservation`): a VM made again at its index takes them instead of new ones."""

    aggregate: ClassVar[str] = "vmpool"
    vm: str
    volumes: list[str] = []
    strategy: str = "proactive"  # or "opportunistic": someone else deleted the VM
    state_preservation: str = "Offline"


class VMPoolStateReused(Event, frozen=True):
    """`vm`, made again at its index, took the DataVolumes kept there (`volumes`)."""

    aggregate: ClassVar[str] = "vmpool"
    vm: str
    volumes: list[str] = []


class VMPoolVMReplaced(Event, frozen=True):
    """`vm` was deleted to be made again from the pool's template (its `dataVolumeTemplates`
    changed: KubeVirt remakes such a VM with new DataVolumes rather than restarting it)."""

    aggregate: ClassVar[str] = "vmpool"
    vm: str
    reason: str = ""


# --- volumes --------------------------------------------------------------------------------------


class VolumeCreated(Event, frozen=True):
    """A claim; `node` "" binds late (WaitForFirstConsumer: the first VM to use it picks it).
    `source` says who fills it: "" blank, "upload" or an http(s) URL (bytes over the bus from the
    CLI), "import:URL", "registry:IMAGE", "clone:NAME" (the node itself, a DataVolume's)."""

    aggregate: ClassVar[str] = "volume"
    size_bytes: int
    node: str = ""
    source: str = ""
    access_modes: list[str] = []
    storage_class: str = ""
    data_volume: bool = False  # made as a CDI DataVolume (listed by `get dv` too)
    owner: str = ""  # the VM whose dataVolumeTemplates made it: deleted with it
    labels: dict[str, str] = {}  # its metadata.labels: a VM's inferFromVolume reads them


class VolumeNodeSelected(Event, frozen=True):
    """WaitForFirstConsumer: the claim is bound to the node its first VM was scheduled on."""

    aggregate: ClassVar[str] = "volume"
    node: str
    consumer: str = ""  # the VM whose scheduling chose the node


class VolumeLabeled(Event, frozen=True):
    """A re-apply of the claim (or `label pvc`) changed its metadata.labels: a VM inferring
    from it later reads these; one that inferred before keeps what its spec recorded."""

    aggregate: ClassVar[str] = "volume"
    labels: dict[str, str] = {}


class VolumePopulationFailed(Event, frozen=True):
    """The node could not fill a DataVolume (an import, a registry copy, a clone). CDI's
    importer pod fails and is restarted after a back-off, the DataVolume counting its restarts;
    so is this fill: the controller sends it again once the fold's back-off has passed."""

    aggregate: ClassVar[str] = "volume"
    reason: str = ""


class VolumeProgress(Event, frozen=True):
    """The node fills the volume (an import, a clone): how far it is, CDI's way ("45.20%")."""

    aggregate: ClassVar[str] = "volume"
    progress: str


class VolumeReady(Event, frozen=True):
    aggregate: ClassVar[str] = "volume"
    format: str = "raw"


class VolumeDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "volume"


class VolumeReleased(Event, frozen=True):
    """VM `owner` no longer owns the DataVolume (KubeVirt removing its owner reference): it
    outlives the VM, `reason` says why."""

    aggregate: ClassVar[str] = "volume"
    owner: str
    reason: str = ""


class VolumeAdopted(Event, frozen=True):
    """VM `owner` took the DataVolume nobody owned, one of its `dataVolumeTemplates` (KubeVirt's
    ClaimMatchedDataVolumes): it goes with that VM from now on."""

    aggregate: ClassVar[str] = "volume"
    owner: str
    reason: str = ""


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


# --- instance types and preferences (instancetype.kubevirt.io) ---------------------------------


class MigrationPolicyApplied(Event, frozen=True):
    """A MigrationPolicy's spec, as applied (events/migration_policies.py)."""

    aggregate: ClassVar[str] = "migrationpolicy"
    spec: dict[str, Any]
    labels: dict[str, str] = {}


class MigrationPolicyDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "migrationpolicy"


class InstancetypeApplied(Event, frozen=True):
    """A VirtualMachineInstancetype's spec, as applied (its subclasses: the other three kinds)."""

    aggregate: ClassVar[str] = "instancetype"
    spec: dict[str, Any]
    labels: dict[str, str] = {}


class InstancetypeDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "instancetype"


class ClusterInstancetypeApplied(InstancetypeApplied, frozen=True):
    aggregate: ClassVar[str] = "clusterinstancetype"


class ClusterInstancetypeDeleted(InstancetypeDeleted, frozen=True):
    aggregate: ClassVar[str] = "clusterinstancetype"


class PreferenceApplied(InstancetypeApplied, frozen=True):
    aggregate: ClassVar[str] = "preference"


class PreferenceDeleted(InstancetypeDeleted, frozen=True):
    aggregate: ClassVar[str] = "preference"


class ClusterPreferenceApplied(InstancetypeApplied, frozen=True):
    aggregate: ClassVar[str] = "clusterpreference"


class ClusterPreferenceDeleted(InstancetypeDeleted, frozen=True):
    aggregate: ClassVar[str] = "clusterpreference"


# --- CDI DataSources (cdi.kubevirt.io) -----------------------------------------------------------


class DataSourceApplied(Event, frozen=True):
    """A DataSource's spec as applied (`source.pvc.namespace` filled in) and its labels (what
    `inferFromVolume` reads through it)."""

    aggregate: ClassVar[str] = "datasource"
    spec: dict[str, Any]
    labels: dict[str, str] = {}


class DataSourceDeleted(Event, frozen=True):
    aggregate: ClassVar[str] = "datasource"


# --- the KubeVirt configuration (kind: KubeVirt) ------------------------------------------------


class KubeVirtApplied(InstancetypeApplied, frozen=True):
    """The KubeVirt object's spec as applied (its `configuration` is what the orchestrator runs
    by), folded like the instance types' kinds; `changes` says what differs from the spec
    before, for whoever reads the history."""

    aggregate: ClassVar[str] = "kubevirt"
    changes: list[str] = []


# --- webhooks -------------------------------------------------------------------------------------


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


# --- users ----------------------------------------------------------------------------------------


class UserAdded(Event, frozen=True):
    """An identity the bus now admits: its role, the namespaces it works in (none: all), its nkey
    public key and the user JWT the account signed for it (public, as the key is; the seed that
    proves it never leaves the user)."""

    aggregate: ClassVar[str] = "user"
    role: str
    public_key: str
    namespaces: list[str] = []
    jwt: str = ""


class UserRevoked(Event, frozen=True):
    """Every key of the user stops working at `revoked_at` (unix seconds): the server cuts off its
    connections and refuses its JWTs issued before then."""

    aggregate: ClassVar[str] = "user"
    public_keys: list[str]
    revoked_at: int


# --- audit ----------------------------------------------------------------------------------------


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
