"""A UDP session's backlog: a local sender faster than the bus loses datagrams, as UDP does,
rather than growing the forwarder's memory without end; the session's end still gets through."""

from __future__ import annotations

from bus.datagrams import BACKLOG, Inbox


async def test_a_flood_is_dropped_past_the_backlog_and_the_end_still_gets_in() -> None:
    inbox = Inbox()
    for i in range(BACKLOG + 10):
        inbox.put(i.to_bytes(4, "big"))
    inbox.put(b"")  # an empty datagram would read as the end: never queued
    assert (inbox.queue.qsize(), inbox.dropped) == (BACKLOG, 10)
    inbox.close("no datagram for 300s")
    inbox.put(b"late")  # after the end: nothing more goes in
    queued = [inbox.queue.get_nowait() for _ in range(inbox.queue.qsize())]
    assert queued == [i.to_bytes(4, "big") for i in range(1, BACKLOG)] + [None]  # oldest out
    assert inbox.reason == "no datagram for 300s"
