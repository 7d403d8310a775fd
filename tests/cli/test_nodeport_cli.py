"""`virtctl expose vm NAME --type NodePort` as the user guide uses it, on two test-driver nodes:
the Service's port gets a nodePort (`get svc` shows it as kubectl does, `-o json` has it in
`spec.ports[].nodePort`), every node's worker listens there (SO_REUSEPORT, one listener each) and,
with no VM network to forward into, closes each connection saying why; deleted, the port closes.
A LoadBalancer Service is a NodePort one whose external address stays pending. Waits follow the
log, and each node's listeners are awaited up to the event that changed them.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from clirun import Result, virtbus
from driverstack import Stack

from bus.client import Rejected, send
from events import commands as c
from events.names import Ref
from workers.worker import Worker

NOT_FORWARDED = ("node {} has no VM network: the VMI's address cannot be reached here (QEMU "
                 "nodes with --vm-network)")  # fmt: skip


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def listeners_follow(st: Stack, nodes: list[Worker], service: str) -> None:
    """Each node's listeners agree with the Service's latest event."""
    seq = (await st.store.read(Ref("service", "default", service)))[-1].seq
    for w in nodes:
        await asyncio.wait_for(w.node_ports.caught_up(seq), 30)


async def test_expose_node_port_shows_its_port_and_every_node_listens_there(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = [await stack.driver_node("node-a"), await stack.driver_node("node-b")]
    made = await cli(stack, "create", "vm", "--name", "r", "--memory", "64Mi")
    assert (await cli(stack, "apply", "-f", "-", stdin=made.ok().out)).ok().err == ""
    await stack.until("r", "Running")

    exposed = await cli(stack, "expose", "vm", "r", "--name", "r-ssh", "--port", "22",
                        "--type", "NodePort")  # fmt: skip
    assert exposed.ok().out == "Service r-ssh successfully created for vm r\n"
    obj = (await cli(stack, "get", "svc", "r-ssh", "-o", "json")).ok().json()
    [port] = obj["spec"]["ports"]
    node_port = port["nodePort"]
    assert 30000 <= node_port <= 32767
    assert (obj["spec"]["type"], port) == ("NodePort", {
        "protocol": "TCP", "port": 22, "targetPort": 22, "nodePort": node_port})  # fmt: skip
    table = (await cli(stack, "get", "svc", "r-ssh")).ok().out.splitlines()
    assert [line.split()[:5] for line in table] == [
        ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
        ["r-ssh", "NodePort", "None", "<none>", f"22:{node_port}/TCP"],
    ]
    # LoadBalancer: a NodePort Service whose external address no controller gives.
    lb = await cli(stack, "expose", "vmi", "r", "--name", "r-web", "--port", "80",
                   "--protocol", "UDP", "--type", "LoadBalancer")  # fmt: skip
    assert lb.ok().out == "Service r-web successfully created for vmi r\n"
    web = (await cli(stack, "get", "svc", "r-web", "-o", "json")).ok().json()["spec"]["ports"][0]
    row = (await cli(stack, "get", "svc", "r-web")).ok().out.splitlines()[1].split()
    assert row[:5] == ["r-web", "LoadBalancer", "None", "<pending>", f"80:{web['nodePort']}/UDP"]

    # The port asked by another Service, and one out of the range: refused as Kubernetes does.
    taken = {**obj["spec"], "ports": [{**port, "nodePort": node_port}]}
    with pytest.raises(Rejected) as again:
        await send(stack.nc, c.CreateService(name="other", spec=taken, vm="r"))
    assert str(again.value) == (f"spec.ports[0].nodePort: Invalid value: {node_port}: provided "
                                "port is already allocated")  # fmt: skip
    low = {**obj["spec"], "ports": [{**port, "nodePort": 2222}]}
    with pytest.raises(Rejected) as out_of_range:
        await send(stack.nc, c.CreateService(name="other", spec=low, vm="r"))
    assert str(out_of_range.value) == (
        "spec.ports[0].nodePort: Invalid value: 2222: provided port is not in the valid range. "
        "The range of valid ports is 30000-32767")  # fmt: skip

    # Every node listens on the nodePort; with no VM network, each connection is closed at once
    # and the node says why.
    await listeners_follow(stack, nodes, "r-ssh")
    assert all((node_port, "TCP") in w.node_ports.listeners for w in nodes)
    caplog.set_level(logging.WARNING, logger="virtbus.nodeports")
    reader, writer = await asyncio.open_connection("127.0.0.1", node_port)
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    said = [r.getMessage() for r in caplog.records if r.name == "virtbus.nodeports"]
    assert len(said) == 1 and said[0] in {
        f"node {n}: nodePort {node_port} (service default/r-ssh) refused a connection: "
        + NOT_FORWARDED.format(n) for n in ("node-a", "node-b")}, said  # fmt: skip

    # Deleted: the port is closed on every node, and free for the asking.
    assert (await cli(stack, "delete", "svc", "r-ssh")).ok().out == 'service "r-ssh" deleted\n'
    await listeners_follow(stack, nodes, "r-ssh")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", node_port)
    assert (await send(stack.nc, c.CreateService(name="other", spec=taken, vm="r"))).accepted
    assert (await cli(stack, "delete", "svc", "other")).ok().out == 'service "other" deleted\n'
    assert (await cli(stack, "delete", "svc", "r-web")).ok().out == 'service "r-web" deleted\n'
    await listeners_follow(stack, nodes, "r-web")
    assert [w.node_ports.listeners for w in nodes] == [{}, {}]
