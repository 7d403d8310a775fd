"""The byte-stream pipe over core NATS (bus.tunnel) on a real nats-server: flow control by
credit, order, loss detection and closing from either end. A spy subscription counts the frames
that actually went over the wire."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.tunnel import (
    CLIENT,
    NODE,
    SEQ,
    Pipe,
    PipeClosed,
    SessionOpen,
    SessionReply,
    connect,
    open_subject,
    pipe_subject,
)
from events.errors import BusUnavailable
from workers.sessions import Body, Sessions


async def pair(nc: Client, *, window: int) -> tuple[Pipe, Pipe]:
    sid = uuid.uuid4().hex
    a = await Pipe(nc, sid=sid, end=CLIENT, window=window).start()
    b = await Pipe(nc, sid=sid, end=NODE, window=window).start()
    return a, b


async def test_a_sender_waits_for_credit_and_bytes_arrive_whole_and_in_order(nc: Client) -> None:
    a, b = await pair(nc, window=4)
    seen: list[int] = []

    async def spy(msg: Msg) -> None:
        if msg.headers and SEQ in msg.headers:
            seen.append(int(msg.headers[SEQ]))

    sub = await nc.subscribe(pipe_subject(a.sid, NODE), cb=spy)
    data = bytes(range(256)) * 40  # 10 KiB in 1 KiB frames: 10 frames
    sender = asyncio.create_task(a.send(data, frame=1024), name="test-sender")
    try:
        for _ in range(20):  # round trips: whatever the sender may publish has arrived
            await nc.flush()
            await asyncio.sleep(0)
        assert seen == [1, 2, 3, 4]  # the window is full and nobody reads: it waits
        assert not sender.done()
        got = b""
        while len(got) < len(data):
            frame = await b.recv(idle_s=10)
            assert frame is not None
            got += frame
        await sender
        assert got == data
        assert seen == list(range(1, 11))
    finally:
        sender.cancel()
        await sub.unsubscribe()
        await a.close()
        await b.close()


async def test_closing_either_end_ends_the_stream_with_its_reason(nc: Client) -> None:
    a, b = await pair(nc, window=4)
    await a.send(b"last words")
    await a.close("done")
    assert await b.recv(idle_s=10) == b"last words"  # what was sent before the close arrives
    assert await b.recv(idle_s=10) is None
    assert await b.recv(idle_s=10) is None  # and stays ended
    assert b.reason == "done"
    await b.close()

    c, d = await pair(nc, window=2)
    await d.close("node going away")
    try:
        for _ in range(10):
            await c.send(b"x")
        raised = None
    except PipeClosed as err:
        raised = err
    assert raised is not None and "node going away" in str(raised)
    await c.close()


async def test_a_lost_frame_ends_the_stream_instead_of_corrupting_it(nc: Client) -> None:
    a, b = await pair(nc, window=4)
    await nc.publish(pipe_subject(a.sid, NODE), b"out of order", headers={SEQ: "2"})
    assert await b.recv(idle_s=10) is None
    assert b.reason == "frame 1 was lost"
    await a.close()
    await b.close()


async def test_a_session_asked_under_one_namespace_for_another_is_refused(nc: Client) -> None:
    """The session subject carries the namespace (what the server lets a user ask for); the
    node takes a request only when its body names the same, else a forged body could reach a
    VM in a namespace its sender may not touch."""

    async def handler(req: SessionOpen) -> tuple[dict[str, Any], Body]:
        async def body(pipe: Pipe) -> None:
            await pipe.close("done")

        return {"vm": f"{req.namespace}/{req.name}"}, body

    stop = asyncio.Event()
    sessions = Sessions(nc, node="node-x", handlers={"echo": handler})
    task = asyncio.create_task(sessions.run(stop), name="sessions")
    try:
        await nc.flush()
        for _ in range(50):  # until the node's subscription is in
            with contextlib.suppress(BusUnavailable):
                pipe, info = await connect(nc, node="node-x", kind="echo", namespace="team-a",
                                           name="v", wait_s=0.5)  # fmt: skip
                break
        assert info == {"vm": "team-a/v"}
        await pipe.close("done")
        forged = SessionOpen(sid="abc123", kind="echo", namespace="default", name="v")
        subject = open_subject("node-x", "echo", namespace="team-a", caller="_")
        reply = await nc.request(subject, msgspec.json.encode(forged), timeout=5)
        assert msgspec.json.decode(reply.data, type=SessionReply) == SessionReply(
            ok=False, error="bad session request: the request names echo in default, but was sent "
            "on virt.session.node-x.echo.team-a._",
        )  # fmt: skip
    finally:
        stop.set()
        await task
