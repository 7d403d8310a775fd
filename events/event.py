"""The base of every event, apart so that the modules holding the events of each concept
(`events/model*.py`) can all derive from it while `events/model.py` gathers them into the union.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True, gc=False):
    """Base of every event; `kind` on the wire is the class name."""

    aggregate: ClassVar[str] = "vm"
