"""The node worker's modules import one another without a cycle (issue 13): its parts receive
what they use from the worker, so none imports the worker (or a part that imports it) back."""

from __future__ import annotations

import grimp


def test_no_import_cycle_in_workers() -> None:
    graph = grimp.build_graph("workers")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == []


def test_the_parts_do_not_import_the_worker() -> None:
    graph = grimp.build_graph("workers")
    importers = graph.find_modules_that_directly_import("workers.worker")
    assert importers <= {"workers.node"}  # the one place that runs a node
