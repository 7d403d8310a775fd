"""The node's permissions name the events it may write (`events.users.NODE_WRITES`); a worker that
started writing another would be refused by the server at run time. This says so at test time:
the events the `workers` package constructs are exactly that set."""

from __future__ import annotations

import ast

from paths import ROOT

from events import model as m
from events.users import NODE_WRITES


def constructed(package: str) -> set[str]:
    """Names of `events.model` classes called anywhere in `package` (as `m.Name(...)`)."""
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "m"
                    and node.func.attr in m.EVENT_BY_NAME):  # fmt: skip
                names.add(node.func.attr)
    return names


def test_the_workers_write_exactly_the_events_a_node_is_allowed() -> None:
    assert constructed("workers") == {cls.__name__ for cls in NODE_WRITES}
