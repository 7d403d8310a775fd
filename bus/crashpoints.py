"""Named points at which a fault test kills the orchestrator or a node worker, the way SIGKILL
would (in bus/ because both use it, and they import nothing of each other).

`VIRTBUS_CRASH_AT=<point>[,<point>...]` makes the process leave at once (`os._exit`, no cleanup,
no flush) when it reaches one: `intake:<Command>` after the intake appended a command's decision
and before the outcome is said or the command acked; `decided:<Event>` after the controller
appended a reaction holding that event and before its work is sent; `sent:<Work>` after a work
item went out; `seen:<Event>` after the controller folded an event (a node's report, mostly)
and before it reacted to it; `reporting:<Event>` before a fact (a node's report: the domain
started, the snapshot taken) is appended, and `reported:<Event>` after, before the work item
that led to it is acknowledged. The fault tests (`tests/control/test_crashpoints.py`,
`tests/qemu/test_faults_qemu.py`) then start it again and check that every command had exactly
one effect and nothing is left half done. Unset (always, outside those tests), each point is one
lookup in an empty set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Final

POINTS: Final = frozenset(os.environ.get("VIRTBUS_CRASH_AT", "").split(",")) - {""}
EXIT_CODE: Final = 137  # what a SIGKILLed process reports


def crash_at(kind: str, names: Iterable[object]) -> None:
    """Leave now if `kind:<type name>` of any of `names` is a crash point."""
    if POINTS:
        for item in names:
            if f"{kind}:{type(item).__name__}" in POINTS:
                os._exit(EXIT_CODE)
