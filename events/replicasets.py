"""The replica-set fold (VirtualMachineInstanceReplicaSet): desired count and template, pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope
from events.folding import Skipped, total

OWNER_LABEL = "virtbus.io/replicaset"  # on every VM a replica set owns


class ReplicaSetState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    namespace: str = ""
    name: str = ""
    version: int = 0
    exists: bool = False
    created: datetime | None = None
    spec: dict[str, Any] = {}
    labels: dict[str, str] = {}
    replicas: int = 0
    skipped: tuple[Skipped, ...] = ()


@total
def apply_rs(s: ReplicaSetState, env: Envelope) -> ReplicaSetState:
    e = env.data
    s = replace(s, version=env.version)
    match e:
        case m.ReplicaSetCreated() | m.ReplicaSetSpecChanged():
            _, ns, name = env.subject.split("/")
            created = env.time if isinstance(e, m.ReplicaSetCreated) else s.created
            return replace(
                s, namespace=ns, name=name, exists=True, created=created, spec=e.spec,
                labels=e.labels, replicas=e.replicas,
            )  # fmt: skip
        case m.ReplicaSetScaled():
            return replace(s, replicas=e.replicas)
        case m.ReplicaSetDeleted():
            return replace(s, exists=False, replicas=0)
    return s


def replica_name(rs: str, index: int) -> str:
    """Replica names are `<rs>-<index>`: deterministic, so deciding twice creates nothing twice."""
    return f"{rs}-{index}"
