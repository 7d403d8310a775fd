"""The wire types of `virtbus-api`'s read endpoint, shared by the service and its clients.

Kept apart from `api.py` so a client (the CLI) imports these structs and not the service with
the intake, controller and telemetry behind it: `virtbus get` starts in a fraction of the time.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

import msgspec

from events.errors import ValidationError
from events.nodes import NodeState
from events.state import VMState


class Query(msgspec.Struct, frozen=True, kw_only=True):
    what: Literal["vms", "nodes", "history"] = "vms"  # history: one VM's (version, seq) index
    namespace: str | None = None
    name: str | None = None
    include_deleted: bool = False
    # A list of VMs comes in pages, the way Kubernetes chunks one: at most `limit` VMs (0: as many
    # as fit in one message), after the VM the previous page's `continue` names.
    limit: Annotated[int, msgspec.Meta(ge=0)] = 0
    continue_: str = msgspec.field(default="", name="continue")


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    vms: list[VMState] = []
    nodes: list[NodeState] = []
    position: int = 0
    history: list[tuple[int, int]] = []
    continue_: str = msgspec.field(default="", name="continue")  # "": this page is the last


_KEY = msgspec.json.Decoder(tuple[str, str])


def continue_token(namespace: str, name: str) -> str:
    """The `continue` of a page whose last VM is namespace/name: opaque to clients, like
    Kubernetes's, so the order it encodes may change without breaking them."""
    raw = msgspec.json.encode((namespace, name))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def continued_after(token: str) -> tuple[str, str]:
    """The (namespace, name) a `continue` token names; a token this API did not make is refused."""
    try:
        return _KEY.decode(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ValidationError("not a continue token from a previous page of this list",
                              field="continue") from None  # fmt: skip
