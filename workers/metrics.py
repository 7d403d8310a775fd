"""A node worker's Prometheus metrics (`virtbus_` prefix): work handled and libvirt events seen."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WORK = Counter(
    "virtbus_node_work_items", "Work items a node handled, by outcome (done, retry, failed)",
    ["node", "action", "result"],
)  # fmt: skip
WORK_SECONDS = Histogram(
    "virtbus_node_work_item_duration_seconds", "Time to carry out one work item", ["action"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)  # fmt: skip
LIBVIRT_EVENTS = Counter(
    "virtbus_libvirt_events",
    "Domain lifecycle events libvirt reported",
    ["node", "event", "reason"],
)
MALFORMED_WORK = Counter("virtbus_node_malformed_work_items", "Undecodable work items", ["node"])
