"""The volume fold (virtbus's PersistentVolumeClaim): size, owning node and phase, pure.

The orchestrator decides volume commands on it, the controller turns it into node work, the node
worker checks its work against it and the CLI prints it, so a volume means the same everywhere.
Phases are a PVC's (`Pending` until the node has the data, then `Bound`) plus a DataVolume's
`Failed` for data that could not be provided (a bad or interrupted upload).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope
from events.folding import Skipped, total

PENDING, BOUND, FAILED = "Pending", "Bound", "Failed"
RETRY_FIRST_S, RETRY_CAP_S = 10.0, 300.0  # a pod's CrashLoopBackOff: 10 s, doubling, 5 min at most


def retry_delay(restarts: int) -> timedelta:
    """How long after its `restarts`-th failure a fill is tried again (CDI's importer pod is
    restarted by the kubelet's back-off)."""
    return timedelta(seconds=min(RETRY_FIRST_S * 2 ** max(restarts - 1, 0), RETRY_CAP_S))


def clone_of(source: str, namespace: str) -> tuple[str, str]:
    """The (namespace, name) of the claim a `clone:NAME` (same namespace) or `clone:NS/NAME`
    source copies (a DataVolume's `source.pvc`, or the claim its DataSource names)."""
    ns, _, name = source.removeprefix("clone:").rpartition("/")
    return ns or namespace, name


def clone_source(namespace: str, name: str, *, into: str) -> str:
    """The source string of a clone of claim NAMESPACE/NAME into namespace `into`."""
    return f"clone:{name}" if namespace == into else f"clone:{namespace}/{name}"


class VolumeState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    namespace: str = ""
    name: str = ""
    version: int = 0
    exists: bool = False
    created: datetime | None = None
    created_version: int = 0  # the VolumeCreated of this incarnation: names its node work
    deleted_version: int = 0
    size_bytes: int = 0
    node: str = ""
    source: str = ""  # "" a blank disk; "upload" or a URL: the bytes come over the bus
    phase: str = ""
    format: str = ""
    reason: str = ""
    moving_to: str = ""  # a move in progress: the node the data is being copied to
    move_version: int = 0
    moved_from: str = ""  # the node the last move left: its copy is to be removed
    moved_version: int = 0
    access_modes: tuple[str, ...] = ()
    storage_class: str = ""
    data_volume: bool = False
    owner: str = ""
    consumer: str = ""  # WaitForFirstConsumer: the VM that chose the node
    progress: str = ""  # a node filling it says how far it is ("" not started)
    restarts: int = 0  # fills that failed and are tried again (a DataVolume's restartCount)
    retry_at: datetime | None = None  # when the next fill goes, after the last one failed
    labels: dict[str, str] = {}
    skipped: tuple[Skipped, ...] = ()


@total
def apply_volume(s: VolumeState, env: Envelope) -> VolumeState:
    e = env.data
    s = replace(s, version=env.version)
    match e:
        case m.VolumeCreated():
            _, ns, name = env.subject.split("/")
            return VolumeState(
                namespace=ns, name=name, version=env.version, exists=True, created=env.time,
                created_version=env.version, size_bytes=e.size_bytes, node=e.node,
                source=e.source, phase=PENDING, access_modes=tuple(e.access_modes),
                storage_class=e.storage_class, data_volume=e.data_volume, owner=e.owner,
                labels=e.labels,
            )  # fmt: skip
        case m.VolumeNodeSelected() if s.exists and not s.node:
            return replace(s, node=e.node, consumer=e.consumer)
        case m.VolumeReleased() if s.exists:
            return replace(s, owner="")
        case m.VolumeAdopted() if s.exists:
            return replace(s, owner=e.owner)
        case m.VolumeLabeled() if s.exists:
            return replace(s, labels=e.labels)
        case m.VolumeProgress() if s.exists and s.phase == PENDING:
            return replace(s, progress=e.progress)
        case m.VolumePopulationFailed() if s.exists and s.phase == PENDING:
            n = s.restarts + 1
            return replace(s, restarts=n, reason=e.reason, progress="",
                           retry_at=env.time + retry_delay(n))  # fmt: skip
        case m.VolumeReady() if s.exists:
            return replace(s, phase=BOUND, format=e.format, reason="",
                           progress="100.0%" if s.progress else "")  # fmt: skip
        case m.VolumeFailed() if s.exists:
            return replace(s, phase=FAILED, reason=e.reason)
        case m.VolumeMoveRequested() if s.exists:
            return replace(s, moving_to=e.node, move_version=env.version)
        case m.VolumeMoved() if s.exists:
            return replace(s, node=e.node, moving_to="", moved_from=e.from_node,
                           moved_version=env.version, reason="")  # fmt: skip
        case m.VolumeMoveFailed() if s.exists:
            return replace(s, moving_to="", reason=f"move failed: {e.reason}")
        case m.VolumeDeleted():
            return replace(s, exists=False, phase="", deleted_version=env.version)
    return s


def dv_phase(v: VolumeState) -> str:
    """The claim's phase as a CDI DataVolume states it (`DataVolumePhase` in CDI's API)."""
    filled_by_node = v.source.startswith(("import:", "registry:", "clone:"))
    kind = v.source.partition(":")[0] if filled_by_node else "upload" if v.source else ""
    if v.phase == FAILED:
        return "Failed"
    if v.phase == BOUND:
        return "Succeeded"
    if not v.node:
        return "WaitForFirstConsumer"
    if kind == "upload":
        return "UploadReady"
    if kind in ("import", "registry"):
        return "ImportInProgress" if v.progress or v.restarts else "ImportScheduled"
    if kind == "clone":
        return "CloneInProgress" if v.progress or v.restarts else "CloneScheduled"
    return PENDING
