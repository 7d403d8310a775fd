"""Names and subjects: where each aggregate's events and commands live on the bus.

Every aggregate (a VM, a node, a replica set...) owns one subject tree, so one filtered read is its
whole history and one wildcard is the optimistic-concurrency scope of an append.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

from events.errors import ValidationError

# `(?!\n)` because `$` also matches before a trailing newline, which must never reach a subject.
DNS1123_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(?!\n)$"
_LABEL_RE: Final = re.compile(DNS1123_LABEL)

# A DNS-1123 label, checked by msgspec when a command or event is decoded.
Name = Annotated[str, msgspec.Meta(pattern=DNS1123_LABEL, min_length=1, max_length=63)]

# Cluster-scoped aggregates (nodes, webhooks) use this namespace token; it is not a DNS-1123 label,
# so it can never collide with a real namespace.
CLUSTER: Final = "_"
DEFAULT_NAMESPACE: Final = "default"

# `intake` holds rejections of commands whose target cannot even be named.
# `audit` holds the signed checkpoints of the log (`events/checkpoint.py`).
# `user` holds who may use the bus, with which role (`events/users.py`).
AGGREGATES: Final = (
    "vm",
    "rs",
    "node",
    "volume",
    "webhook",
    "intake",
    "audit",
    "user",
    "instancetype",
    "clusterinstancetype",
    "preference",
    "clusterpreference",
    "vmpool",
    "kubevirt",
    "service",
    "migrationpolicy",
    "datasource",
)
CLUSTER_SCOPED: Final = frozenset(
    {
        "node",
        "webhook",
        "intake",
        "audit",
        "user",
        "clusterinstancetype",
        "clusterpreference",
        "migrationpolicy",
    }
)

EVENTS_STREAM: Final = "VIRT_EVENTS"
COMMANDS_STREAM: Final = "VIRT_COMMANDS"
WORK_STREAM: Final = "VIRT_WORK"
HEARTBEAT_BUCKET: Final = "virt_heartbeats"
LEASE_BUCKET: Final = "virt_leases"  # which orchestrator acts (`orchestrator/lease.py`)

EVENT_SUBJECTS: Final = tuple(f"virt.{kind}.>" for kind in AGGREGATES)
COMMAND_SUBJECTS: Final = ("virt.cmd.>",)
WORK_SUBJECTS: Final = ("virt.work.>",)


def check_name(value: str, *, field: str) -> str:
    """Return `value` if it is a DNS-1123 label, else raise naming the field and the rule."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field}: a name is required", field=field)
    if len(value) > 63:
        raise ValidationError(
            f"{field}: {value!r} is {len(value)} characters long; a DNS-1123 label has at most 63",
            field=field,
        )
    if not _LABEL_RE.match(value):
        raise ValidationError(
            f"{field}: {value!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)",
            field=field,
        )
    return value


class Ref(msgspec.Struct, frozen=True):
    """Identity of one aggregate: its kind, namespace and name."""

    kind: str
    namespace: str
    name: str

    @classmethod
    def vm(cls, name: str, namespace: str = DEFAULT_NAMESPACE) -> Ref:
        return cls.of("vm", name, namespace)

    @classmethod
    def node(cls, name: str) -> Ref:
        return cls.of("node", name, CLUSTER)

    @classmethod
    def of(cls, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> Ref:
        if kind not in AGGREGATES:
            raise ValidationError(f"kind: unknown aggregate kind {kind!r}", field="kind")
        if kind in CLUSTER_SCOPED:
            namespace = CLUSTER
        else:
            check_name(namespace, field="metadata.namespace")
        check_name(name, field="metadata.name")
        return cls(kind, namespace, name)

    @property
    def prefix(self) -> str:
        return f"virt.{self.kind}.{self.namespace}.{self.name}"

    @property
    def wildcard(self) -> str:
        """Every event subject of this aggregate: its OCC scope and its history filter."""
        return f"{self.prefix}.>"

    def event_subject(self, token: str, *, writer: str = "") -> str:
        """Where an event of this aggregate goes; a node ends it with its own name (`writer`),
        the only name the server lets it write under, so the log says which node observed it."""
        return f"{self.prefix}.{token}.{writer}" if writer else f"{self.prefix}.{token}"

    def command_subject(self, token: str, *, actor: str = "") -> str:
        """Where a command to this aggregate goes; on a secured bus the server lets a client
        publish only with its own name as `actor`, so that last token is who asked."""
        subject = f"virt.cmd.{self.kind}.{self.namespace}.{self.name}.{token}"
        return f"{subject}.{actor}" if actor else subject

    def __str__(self) -> str:
        if self.namespace == CLUSTER:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"


def ref_from_subject(subject: str) -> Ref | None:
    """The aggregate an event subject belongs to, or None for a subject outside the event tree."""
    parts = subject.split(".")
    if len(parts) not in (5, 6) or parts[0] != "virt" or parts[1] not in AGGREGATES:
        return None
    return Ref(parts[1], parts[2], parts[3])


def aggregate_key(subject: str) -> str:
    """`virt.<kind>.<ns>.<name>`: the aggregate an event subject (with or without the writer's
    name last) belongs to, or a command subject's target (`virt.cmd.<kind>.<ns>.<name>`)."""
    head = subject.rpartition(".")[0]
    tokens = 5 if subject.startswith("virt.cmd.") else 4
    return head if head.count(".") == tokens - 1 else head.rpartition(".")[0]


def writer_of(subject: str) -> str:
    """The node an event subject names as its writer (its sixth token), or "" for none."""
    parts = subject.split(".")
    return parts[5] if len(parts) == 6 and parts[0] == "virt" else ""


def command_parts(subject: str) -> tuple[Ref, str] | None:
    """(target, actor) of a command subject `virt.cmd.<kind>.<ns>.<name>.<Command>[.<actor>]`
    (actor "" where the subject names none: an open bus), or None for any other subject."""
    parts = subject.split(".")
    if len(parts) not in (6, 7) or parts[:2] != ["virt", "cmd"]:
        return None
    return Ref(parts[2], parts[3], parts[4]), parts[6] if len(parts) == 7 else ""


API_PREFIX: Final = "virt.api"


def outcome_subject(command_id: str) -> str:
    """Core NATS subject where the orchestrator announces a command's outcome (not persisted)."""
    return f"virt.outcome.{command_id}"


def work_subject(node: str, ref: Ref) -> str:
    return f"virt.work.{node}.{ref.kind}.{ref.namespace}.{ref.name}"


def node_work_filter(node: str) -> str:
    return f"virt.work.{node}.>"
