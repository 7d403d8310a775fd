"""Objects that are a spec and labels with a history, created, replaced and deleted whole:
KubeVirt's instance types and preferences, CDI's DataSources, KubeVirt's MigrationPolicies. One
fold and one judgement serve them all; each kind's module keeps what is its own (its events, how
its spec is checked, what it means to the rest).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from events import model as m
from events.envelope import Envelope
from events.errors import ValidationError, stale
from events.folding import Skipped
from events.names import CLUSTER


class SpecObject(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    namespace: str = ""
    name: str = ""
    aggregate: str = ""
    version: int = 0
    exists: bool = False
    created: datetime | None = None
    spec: dict[str, Any] = {}
    labels: dict[str, str] = {}
    skipped: tuple[Skipped, ...] = ()


def fold_object(
    s: SpecObject, env: Envelope, *, applied: type[m.Event], deleted: type[m.Event]
) -> SpecObject:
    """One event of the object: `applied` (a spec and labels) or `deleted`."""
    e = env.data
    s = replace(s, version=env.version)
    if isinstance(e, applied):
        data: Any = e  # (an `applied` has a spec and labels; the type cannot say so)
        parts = env.subject.split("/")  # `kind/name` for the cluster-wide kinds
        ns, name = (parts[1], parts[2]) if len(parts) == 3 else (CLUSTER, parts[-1])
        created = s.created if s.exists else env.time
        return SpecObject(namespace=ns, name=name, aggregate=e.aggregate, version=env.version,
                          exists=True, created=created, spec=data.spec,
                          labels=data.labels)  # fmt: skip
    if isinstance(e, deleted):
        return replace(s, exists=False)
    return s


def decide_object(
    s: SpecObject, cmd: Any, *, resource: str, applied: type[m.Event], deleted: type[m.Event],
    spec: dict[str, Any] | None = None,
) -> list[m.Event]:  # fmt: skip
    """Apply (created, replaced, or unchanged: no event) or delete; `spec`: the command's as
    the kind records it (checked, filled in), else the command's own."""
    if hasattr(cmd, "spec"):
        if s.exists and cmd.create_only:
            raise ValidationError(f'{resource} "{cmd.name}" already exists', field="name")
        if cmd.expected_version and cmd.expected_version != s.version:
            raise ValidationError(stale(resource, cmd.name), field="metadata.resourceVersion")
        spec = cmd.spec if spec is None else spec
        if s.exists and (s.spec, s.labels) == (spec, cmd.labels):
            return []
        made: Any = applied
        return [made(spec=spec, labels=dict(cmd.labels))]
    if not s.exists:
        raise ValidationError(f'{resource} "{cmd.name}" not found', field="name")
    return [deleted()]
