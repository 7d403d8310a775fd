"""Sending node work: once per item, with the VM's tip, on the lean path.

Level-triggered reactions ask for the same item again at each event of its VM. The work stream
would drop the copy (same message id), but only after a round trip for it, so the items sent
lately are remembered here. Each item carries where its VM's log stood as the controller last
wrote it (`events.work.Tip`): the node's first observation then needs no lookup.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final

import msgspec
from nats.aio.client import Client

from bus.crashpoints import crash_at
from bus.publish import Publisher
from bus.store import EventStore
from bus.telemetry import TRACE
from events import work as w
from events.envelope import encode
from events.names import WORK_STREAM
from orchestrator import metrics

RESEND_AFTER_S: Final = 60.0  # within JetStream's 2-minute dedup window a resend is dropped anyway
SENT_MEMORY: Final = 100_000
SEND_S: Final = 5.0  # the work stream's ack


class WorkOut:
    """The controller's outbox to the nodes."""

    def __init__(self, nc: Client, store: EventStore) -> None:
        self.store = store  # its guard (the lease) and the heads it knows
        self._publisher = Publisher(nc, stream=WORK_STREAM)  # lean where the login allows
        self._sent: OrderedDict[str, float] = OrderedDict()  # message id -> when it went out

    async def send(self, work: list[w.Work]) -> None:
        if self.store.guard is not None:
            self.store.guard()  # work is an act too: only the lease's holder sends it
        now = time.monotonic()
        for item in work:
            sent = self._sent.get(item.msg_id)
            if sent is not None and now - sent < RESEND_AFTER_S:
                continue
            headers = {"Nats-Msg-Id": item.msg_id}
            if trace := TRACE.get():
                headers["traceparent"] = trace
            head = self.store.heads.tip(item.ref)
            tipped = item if head is None else msgspec.structs.replace(
                item, tip=w.Tip(head.version, head.seq, head.hash))  # fmt: skip
            await self._publisher.send([(item.subject, encode(tipped), headers)], within=SEND_S)
            crash_at("sent", [item])
            metrics.WORK_ENQUEUED.labels(type(item).__name__).inc()
            self._sent[item.msg_id] = now
            self._sent.move_to_end(item.msg_id)
            while len(self._sent) > SENT_MEMORY:
                self._sent.popitem(last=False)

    def close(self) -> None:
        self._publisher.close()
