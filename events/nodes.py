"""The node fold: what the log says about a node (capacity, cordon, lost), pure like the VM fold.

Liveness itself is not in the log (heartbeats live in a KV bucket); the log records the decisions
taken on it: NodeRegistered when a worker (re)joins, NodeLost when its heartbeat lapsed.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope
from events.folding import Skipped, total

READY, NOT_READY = "Ready", "NotReady"


class Heartbeat(msgspec.Struct, frozen=True):
    """A node worker's value in the heartbeat bucket, under the node's name."""

    at: float  # unix time of the beat


class NodeState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    name: str = ""
    version: int = 0
    registered: datetime | None = None
    hypervisor: str = ""
    libvirt_uri: str = ""
    cpus: int = 0
    memory_bytes: int = 0
    kvm: bool = False
    labels: dict[str, str] = {}
    pods: str = ""
    migration_uri: str = ""
    status: str = NOT_READY
    cordoned: bool = False
    draining: bool = False
    drain_requested: datetime | None = None  # the latest drain: evictions since then count
    skipped: tuple[Skipped, ...] = ()

    @property
    def schedulable(self) -> bool:
        return self.status == READY and not self.cordoned


@total
def apply_node(s: NodeState, env: Envelope) -> NodeState:
    e = env.data
    s = replace(s, version=env.version)
    match e:
        case m.NodeRegistered():
            return replace(
                s,
                name=env.subject.rpartition("/")[2],
                registered=env.time,
                hypervisor=e.hypervisor,
                libvirt_uri=e.libvirt_uri,
                cpus=e.cpus,
                memory_bytes=e.memory_bytes,
                kvm=e.kvm,
                labels=e.labels,
                pods=e.pods,
                migration_uri=e.migration_uri,
                status=READY,
            )
        case m.NodeLost():
            return replace(s, status=NOT_READY)
        case m.NodeCordoned():
            return replace(s, cordoned=True)
        case m.NodeUncordoned():
            return replace(s, cordoned=False, draining=False)
        case m.NodeDrainRequested():
            return replace(s, cordoned=True, draining=True, drain_requested=env.time)
    return s
