"""`virtbus admin status`: is the stack whole? Each part as the bus itself shows it.

The servers: each URL the CLI was given, asked for its greeting (up or not, its name and
version), and JetStream's own view of each stream (`$JS.API.STREAM.INFO`: which server leads it,
which follow, current or lagging or offline). What `$SYS` knows needs the system account's
credentials, which an admin does not hold: it is not asked. The orchestrator: whether
virtbus-api answers, and how far its read model has read of the log; the webhook dispatcher:
whether it answers; the nodes: the heartbeat bucket's last beat of each, and the nodes the
orchestrator knows that no longer beat.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Final

import msgspec
from nats.aio.client import Client

from bus.client import query, session
from bus.connect import greeting, servers
from bus.provision import HEARTBEAT_TTL_S
from events import render
from events.errors import VirtbusError
from events.names import (
    COMMANDS_STREAM,
    EVENTS_STREAM,
    HEARTBEAT_BUCKET,
    LEASE_BUCKET,
    WORK_STREAM,
)
from events.nodes import Heartbeat
from events.protocol import Query
from events.webhooks import DELIVERIES_SUBJECT, DeliveriesQuery

STREAMS: Final = (EVENTS_STREAM, COMMANDS_STREAM, WORK_STREAM, f"KV_{HEARTBEAT_BUCKET}",
                  f"KV_{LEASE_BUCKET}")  # fmt: skip
ASK_S: Final = 3.0
_BEAT: Final = msgspec.json.Decoder(Heartbeat)


async def status(url: str) -> dict[str, Any]:
    """Every part's state, as one JSON-able dict."""
    greetings = await asyncio.gather(*(greeting(u) for u in servers(url)))
    async with session(url) as nc:
        streams = [await _stream(nc, name) for name in STREAMS]
        orchestrator = await _orchestrator(nc)
        dispatcher = await _answers(nc, DELIVERIES_SUBJECT, DeliveriesQuery(name="", limit=1))
        nodes = await _nodes(nc, known=orchestrator.pop("nodes", []))
    leads: dict[str, list[str]] = {}
    for s in streams:
        if s.get("leader"):
            leads.setdefault(s["leader"], []).append(s["name"])
    out = []
    for u, info in zip(servers(url), greetings, strict=True):
        name = str(info.get("server_name") or "")
        out.append({"url": u, "name": name, "up": bool(info), "version": info.get("version"),
                    "leads": leads.get(name, [])})  # fmt: skip
    return {"servers": out, "streams": streams, "orchestrator": orchestrator,
            "dispatcher": {"answering": dispatcher}, "nodes": nodes}  # fmt: skip


async def _stream(nc: Client, name: str) -> dict[str, Any]:
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=ASK_S)
        info = json.loads(reply.data)
    except Exception as err:  # no responders (no leader now), a timeout
        return {"name": name, "error": f"no answer: {type(err).__name__}"}
    if "error" in info:
        return {"name": name, "error": info["error"].get("description", "")}
    cluster = info.get("cluster") or {}
    return {
        "name": name,
        "replicas": info["config"].get("num_replicas", 1),
        "messages": info["state"]["messages"],
        "last_seq": info["state"]["last_seq"],
        "leader": cluster.get("leader"),
        "followers": [
            {
                "name": r["name"],
                "current": bool(r.get("current")),
                "offline": bool(r.get("offline")),
                "lag": r.get("lag", 0),
            }
            for r in cluster.get("replicas") or []
        ],
    }


async def _orchestrator(nc: Client) -> dict[str, Any]:
    """Whether virtbus-api answers, and who holds the controller's lease (the one that acts;
    `orchestrator/lease.py`)."""
    lease: dict[str, Any] | None = None
    try:
        entry = await (await nc.jetstream().key_value(LEASE_BUCKET)).get("controller")
        lease = json.loads(entry.value or b"null")
    except Exception:  # no bucket (an older bus), no holder yet, no leader for it now
        pass
    try:
        answer = await query(nc, Query(what="nodes"), wait_s=ASK_S)
    except VirtbusError as err:
        return {"answering": False, "why": str(err), "lease": lease}
    return {"answering": True, "read_model_position": answer.position, "lease": lease,
            "nodes": [n.name for n in answer.nodes]}  # fmt: skip


async def _answers(nc: Client, subject: str, body: msgspec.Struct) -> bool:
    try:
        await nc.request(subject, msgspec.json.encode(body), timeout=ASK_S)
    except Exception:  # no responders, a timeout
        return False
    return True


async def _nodes(nc: Client, *, known: list[str]) -> list[dict[str, Any]]:
    """Each node's last heartbeat (a beat expires from the bucket after HEARTBEAT_TTL_S: a node
    the orchestrator knows and the bucket does not has been silent longer)."""
    beats: dict[str, float] = {}
    try:
        kv = await nc.jetstream().key_value(HEARTBEAT_BUCKET)
        for key in await kv.keys():
            entry = await kv.get(key)
            if entry.value:
                beats[key] = _BEAT.decode(entry.value).at
    except Exception:  # no keys at all (nats-py raises), or the bucket has no leader now
        pass
    now = time.time()
    return [
        {"name": name, "heartbeat_age_s": round(now - beats[name], 1) if name in beats else None}
        for name in sorted(set(beats) | set(known))
    ]


def show(state: dict[str, Any], *, output: str) -> str:
    """`-o json`, or tables in kubectl's manner."""
    if output == "json":
        return json.dumps(state, indent=2)
    servers_t = render.table(["SERVER", "URL", "STATE", "VERSION", "LEADS"], [
        [s["name"] or "-", s["url"], "up" if s["up"] else "down", s["version"] or "-",
         ", ".join(s["leads"]) or "-"]
        for s in state["servers"]
    ])  # fmt: skip
    streams_t = render.table(["STREAM", "REPLICAS", "LEADER", "FOLLOWERS", "LAST SEQ"], [
        [s["name"], "-", "-", s["error"], "-"] if "error" in s else
        [s["name"], str(s["replicas"]), s["leader"] or "(none now)",
         ", ".join(_follower(f) for f in s["followers"]) or "-", str(s["last_seq"])]
        for s in state["streams"]
    ])  # fmt: skip
    o = state["orchestrator"]
    orch = (f"answering, read model at log position {o['read_model_position']}"
            if o["answering"] else f"not answering ({o['why']})")  # fmt: skip
    if lease := o.get("lease"):
        orch += f"; the lease held by {lease.get('holder')} (epoch {lease.get('epoch')})"
    disp = "answering" if state["dispatcher"]["answering"] else "not answering"
    nodes_t = render.table(["NODE", "HEARTBEAT"], [
        [n["name"], f"{n['heartbeat_age_s']}s ago" if n["heartbeat_age_s"] is not None
         else f"none for over {HEARTBEAT_TTL_S:g}s"]
        for n in state["nodes"]
    ])  # fmt: skip
    return "\n".join([servers_t.rstrip("\n"), "", streams_t.rstrip("\n"), "",
                      f"orchestrator: {orch}", f"webhook dispatcher: {disp}", "",
                      nodes_t.rstrip("\n")])  # fmt: skip


def _follower(f: dict[str, Any]) -> str:
    said = "offline" if f["offline"] else "current" if f["current"] else f"lag {f['lag']}"
    return f"{f['name']} ({said})"
