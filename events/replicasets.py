"""The replica-set fold (VirtualMachineInstanceReplicaSet, and VirtualMachinePool, whose events
subclass the replica set's): desired count and template, pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope
from events.folding import Skipped, total

OWNER_LABEL = "virtbus.io/replicaset"  # on every VM a replica set owns
POOL_LABEL = "kubevirt.io/vmpool"  # on every VM a pool owns (KubeVirt's label)
LABELS = {"rs": OWNER_LABEL, "vmpool": POOL_LABEL}


class ReplicaSetState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    aggregate: str = "rs"  # or "vmpool"
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
            aggregate, ns, name = env.subject.split("/")
            created = env.time if isinstance(e, m.ReplicaSetCreated) else s.created
            return replace(
                s, aggregate=aggregate, namespace=ns, name=name, exists=True, created=created,
                spec=e.spec, labels=e.labels, replicas=e.replicas,
            )  # fmt: skip
        case m.ReplicaSetScaled():  # `spec.replicas` is what a scale sets: a re-apply sees it
            return replace(s, replicas=e.replicas, spec={**s.spec, "replicas": e.replicas})
        case m.ReplicaSetDeleted():
            return replace(s, exists=False, replicas=0)
    return s


def replica_name(rs: str, index: int) -> str:
    """Replica names are `<rs>-<index>`: deterministic, so deciding twice creates nothing twice."""
    return f"{rs}-{index}"


def owners(s: Any) -> list[str]:
    """The subject keys of the replica set and the pool that own VM `s` (by their labels)."""
    return [f"virt.{aggregate}.{s.namespace}.{s.labels[label]}"
            for aggregate, label in LABELS.items() if s.labels.get(label)]  # fmt: skip
