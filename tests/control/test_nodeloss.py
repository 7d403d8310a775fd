"""Node loss from a watch of the heartbeat bucket, on a real nats-server's KV.

The watch keeps each node's last beat; a beat nobody can read counts as none (a node writing
garbage into its own heartbeat is lost, not trusted), and an expiry keeps the last beat seen.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
from nats.aio.client import Client

from bus.store import EventStore
from events import model as m
from events.names import HEARTBEAT_BUCKET, Ref
from events.nodes import READY, Heartbeat, NodeState
from orchestrator.nodeloss import Heartbeats, record_lost

REGISTERED = m.NodeRegistered(hypervisor="test", libvirt_uri="test:///default", cpus=2,
                              memory_bytes=2**30, kvm=False)  # fmt: skip


async def _until(beats: Heartbeats, key: str, at: float) -> None:
    for _ in range(200):  # the watch delivers in the background
        if beats.last.get(key) == at:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key}: {beats.last.get(key)} never became {at}")


async def test_the_watch_keeps_last_beats_and_a_garbled_one_is_lost(
    nc: Client, store: EventStore
) -> None:
    kv = await nc.jetstream().key_value(HEARTBEAT_BUCKET)
    tag = uuid.uuid4().hex[:8]
    alive, garbled, silent = f"alive-{tag}", f"garbled-{tag}", f"silent-{tag}"
    now = time.time()
    await kv.put(alive, msgspec.json.encode(Heartbeat(at=now - 1)))
    await kv.put(garbled, b"\x00not a heartbeat")
    beats = Heartbeats()
    watch = asyncio.create_task(beats.run(kv), name="test-heartbeats")
    try:
        await asyncio.wait_for(beats.ready.wait(), 10)
        mine = {k: v for k, v in beats.last.items() if k.endswith(tag)}
        assert mine == {alive: now - 1, garbled: 0.0}
        nodes = {}
        for name in (alive, garbled, silent):
            await store.append(Ref.node(name), [REGISTERED], expected_version=0)
            nodes[name] = NodeState(name=name, status=READY, version=1)
        await record_lost(store, beats.last, nodes, grace_s=5)
        lost = {n: [type(r.envelope.data).__name__ for r in await store.read(Ref.node(n))]
                for n in nodes}  # fmt: skip
        assert lost == {alive: ["NodeRegistered"],
                        garbled: ["NodeRegistered", "NodeLost"],
                        silent: ["NodeRegistered", "NodeLost"]}  # fmt: skip
        later = time.time()
        await kv.put(alive, msgspec.json.encode(Heartbeat(at=later)))
        await _until(beats, alive, later)  # a new beat is seen without asking
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
