"""The wire types of `virtbus-api`'s read endpoint, shared by the service and its clients.

Kept apart from `api.py` so a client (the CLI) imports these structs and not the service with
the intake, controller and telemetry behind it: `virtbus get` starts in a fraction of the time.
"""

from __future__ import annotations

import msgspec

from events.nodes import NodeState
from events.state import VMState


class Query(msgspec.Struct, frozen=True, kw_only=True):
    what: str = "vms"  # vms | nodes | history (one VM's (version, seq) index)
    namespace: str | None = None
    name: str | None = None
    include_deleted: bool = False


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    vms: list[VMState] = []
    nodes: list[NodeState] = []
    position: int = 0
    history: list[tuple[int, int]] = []
