"""The floor plan holds: no import cycle anywhere in our packages, each module short and saying why.

import-linter (`make layers`) checks which package may import which; a cycle inside one package is
beyond its contracts, so this test builds the module graph itself from the sources (static: every
`import`, including those inside functions) and names each strongly connected component it finds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from paths import ROOT

PACKAGES = ("events", "bus", "orchestrator", "workers", "virtctl", "bench", "virtbus")
MAX_LINES = 420  # the style guide's "under ~400", with room for a docstring's last line


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ours that `name` imports: `from a import b` counts `a.b` if it is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}"
                elif base in known:
                    yield base


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(name, path, known)) - {name} for name, path in known.items()}


def test_the_cycle_finder_finds_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]


def test_no_module_of_ours_is_in_an_import_cycle() -> None:
    assert cycles(graph()) == []


def test_every_module_says_why_it_exists_and_stays_short() -> None:
    undocumented, long = [], []
    for name, path in modules().items():
        text = path.read_text()
        if ast.get_docstring(ast.parse(text)) is None and text.strip():
            undocumented.append(name)
        if len(text.splitlines()) > MAX_LINES:
            long.append(f"{name}: {len(text.splitlines())} lines")
    assert (undocumented, long) == ([], [])
