"""The VM network's addresses, allocated and released as events by the orchestrator.

Simulated nodes (SimNode) on a real nats-server: each instance gets an address of the pool when it
is scheduled (`IPAllocated`), gives it back when it ends (`IPReleased`), no two instances hold one
at once however many start together, and a restarted orchestrator knows from the log which are
taken. (Kept across a migration: tests/flows/test_migrate.py.)
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import nats
import pytest
from clusterkit import Cluster, seed_apply, shut_down, start_orchestrator
from waits import api_ready, settle

from bus.provision import provision
from bus.server import NatsServer
from events import commands as c
from events import model as m
from events.render import vmi_object, vmi_table
from events.state import VMState
from orchestrator.ipam import AddressPool, PoolExhausted, mac_for

POOL = ipaddress.IPv4Network("10.244.0.0/16")


def events_of(history: list[object]) -> list[m.Event]:
    return [r.envelope.data for r in history]  # type: ignore[attr-defined]


async def test_an_instance_gets_an_address_and_gives_it_back(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.send(seed_apply("web", running=True))
    s = await cluster.until("web", lambda s: s.status == "Running")
    assert s.ip == "10.244.0.2"  # .1 is the network's gateway
    assert s.mac == "52:54:0a:f4:00:02" and s.ip_vmi == s.vmi_uid
    [alloc] = [e for e in events_of(await cluster.history("web")) if isinstance(e, m.IPAllocated)]
    assert alloc == m.IPAllocated(address="10.244.0.2", vmi_uid=s.vmi_uid,
                                  mac="52:54:0a:f4:00:02", cidr="10.244.0.0/16")  # fmt: skip
    start = next(w for w in cluster.nodes[0].work if type(w).__name__ == "Start")
    assert (start.ip, start.mac) == ("10.244.0.2", "52:54:0a:f4:00:02")  # type: ignore[attr-defined]
    vmi = vmi_object(s)
    assert vmi is not None and vmi["status"]["interfaces"] == [{
        "name": "default", "interfaceName": "eth0", "ipAddress": "10.244.0.2",
        "ipAddresses": ["10.244.0.2"], "mac": "52:54:0a:f4:00:02", "infoSource": "domain",
    }]  # fmt: skip
    assert vmi_table([s]).splitlines()[1].split()[3] == "10.244.0.2"  # the IP column

    first_uid = s.vmi_uid
    await cluster.send(c.StopVM(name="web"))
    s = await cluster.until("web", lambda s: s.status == "Stopped" and not s.ip)
    events = events_of(await cluster.history("web"))
    stopped = next(i for i, e in enumerate(events) if isinstance(e, m.VMStopped))
    assert events[stopped + 1] == m.IPReleased(address="10.244.0.2", vmi_uid=first_uid)
    assert (s.ip, s.ip_vmi, s.mac) == ("", "", "")

    await cluster.send(c.StartVM(name="web"))  # a new instance: a new allocation
    s = await cluster.until("web", lambda s: s.status == "Running")
    assert s.ip == "10.244.0.3" and s.ip_vmi == s.vmi_uid != first_uid
    await cluster.send(c.DeleteVM(name="web"))
    await cluster.until("web", lambda s: s.deleted)
    events = events_of(await cluster.history("web"))
    assert isinstance(events[-2], m.IPReleased) and isinstance(events[-1], m.VMDeleted)
    assert events[-2] == m.IPReleased(address="10.244.0.3", vmi_uid=s.vmi_uid)


async def test_many_starts_at_once_never_share_an_address(cluster: Cluster) -> None:
    for node in ("node-a", "node-b", "node-c"):
        await cluster.node(node, cpus=64, memory_bytes=128 << 30)
    names = [f"vm-{i}" for i in range(40)]
    await asyncio.gather(*(cluster.send(seed_apply(n, running=True)) for n in names))
    states = [await cluster.until(n, lambda s: s.status == "Running" and bool(s.ip))
              for n in names]  # fmt: skip
    addresses = [s.ip for s in states]
    assert len(set(addresses)) == 40
    assert all(ipaddress.IPv4Address(a) in POOL for a in addresses)
    assert {s.node for s in states} == {"node-a", "node-b", "node-c"}  # across nodes, one pool


async def test_a_restarted_orchestrator_knows_the_taken_addresses(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        cl = Cluster(nc, tmp_path)
        stop, task = await start_orchestrator(nc, tmp_path / "o1")
        try:
            await api_ready(nc)
            await cl.node("node-a")
            for name in ("a", "b", "c"):
                await cl.send(seed_apply(name, running=True))
            before = {n: (await cl.until(n, lambda s: s.status == "Running")).ip
                      for n in ("a", "b", "c")}  # fmt: skip
            await cl.send(c.StopVM(name="b"))  # .3 is free again
            await cl.until("b", lambda s: s.status == "Stopped" and not s.ip)
            stop.set()
            await settle("the first orchestrator", task)
            stop, task = await start_orchestrator(nc, tmp_path / "o2")  # a fresh read model too
            await api_ready(nc)
            for name in ("d", "e"):
                await cl.send(seed_apply(name, running=True))
            after = {n: (await cl.until(n, lambda s: s.status == "Running")).ip
                     for n in ("a", "c", "d", "e")}  # fmt: skip
        finally:
            await shut_down(cl, stop, task)
    assert before == {"a": "10.244.0.2", "b": "10.244.0.3", "c": "10.244.0.4"}
    assert (after["a"], after["c"]) == ("10.244.0.2", "10.244.0.4")  # kept by the running two
    assert {after["d"], after["e"]} == {"10.244.0.3", "10.244.0.5"}  # the freed one, and a new


def held(key: str, ip: str, uid: str = "u") -> VMState:
    return VMState(namespace="default", name=key, exists=True, ip=ip, ip_vmi=uid)


def test_the_pool_skips_taken_addresses_and_wraps() -> None:
    pool = AddressPool("10.9.0.0/29")  # .2 to .6 are instances' (.1 the gateway, .7 broadcast)
    assert [pool.allocate(k) for k in "abc"] == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]
    assert pool.allocate("a") == "10.9.0.2"  # not folded yet: the same decision again
    for k, ip in zip("abc", ["10.9.0.2", "10.9.0.3", "10.9.0.4"], strict=True):
        pool.folded(k, held(k, ip))
    pool.folded("b", VMState(name="b"))  # released
    assert [pool.allocate(k) for k in "de"] == ["10.9.0.5", "10.9.0.6"]
    assert pool.allocate("f") == "10.9.0.3"  # wrapped around to the freed one
    pool.release("f")  # its decision lost the race: free again
    assert pool.allocate("g") == "10.9.0.3"
    with pytest.raises(PoolExhausted, match=r"^no free address in the VM network 10.9.0.0/29$"):
        pool.allocate("h")
    # Two controllers gave one address twice: the first holder keeps it, the second clashes.
    pool.folded("x", held("x", "10.9.0.4"))
    assert (pool.clashes("c", "10.9.0.4"), pool.clashes("x", "10.9.0.4")) == (False, True)
    assert mac_for("10.244.1.2") == "52:54:0a:f4:01:02"
