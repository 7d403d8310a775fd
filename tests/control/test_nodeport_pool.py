"""NodePort Services' ports: allocated from 30000-32767 when the Service is created (written into
its recorded spec, as Kubernetes' API server writes `spec.ports[].nodePort`), unique across the
cluster, given back when the Service is deleted. Pure tests of the pool and the decision, then the
orchestrator judging Services created side by side on a real nats-server.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from clusterkit import Cluster

from bus.client import Rejected
from events import commands as c
from events import model as m
from events.envelope import Envelope
from events.errors import ValidationError
from events.names import Ref
from events.services import (
    ServiceState,
    apply_service,
    decide_service,
    external_ip,
    holders,
    node_ports,
    ports_text,
)
from orchestrator.nodeports import NodePortPool

RANGE_SAYS = "provided port is not in the valid range. The range of valid ports is 30000-32767"


def spec(*node_ports: int | None, kind: str = "NodePort", protocol: str = "TCP") -> dict[str, Any]:
    ports = [{"port": 22 + i, "targetPort": 22 + i, "protocol": protocol,
              **({"nodePort": n} if n is not None else {})}
             for i, n in enumerate(node_ports)]  # fmt: skip
    return {"type": kind, "clusterIP": "None", "ports": ports}  # fmt: skip


def envelope(name: str, event: m.Event, *, version: int, second: int = 0) -> Envelope:
    return Envelope(id=f"{name}-{version}", source="/tests", type=type(event).__name__,
                    subject=f"service/default/{name}", version=version, data=event,
                    time=datetime(2024, 1, 1, 0, 0, second, tzinfo=UTC))  # fmt: skip


def created(name: str, s: dict[str, Any], *, second: int = 0) -> ServiceState:
    env = envelope(name, m.ServiceCreated(spec=s, vm="r"), version=1, second=second)
    return apply_service(ServiceState(), env)


def deleted(svc: ServiceState) -> ServiceState:
    return apply_service(svc, envelope(svc.name, m.ServiceDeleted(), version=svc.version + 1))


def create(name: str, s: dict[str, Any]) -> c.CreateService:
    return c.CreateService(name=name, spec=s, vm="r")


def test_a_node_port_service_gets_a_port_of_the_range_written_into_its_spec() -> None:
    pool = NodePortPool(rng=random.Random(7))
    [event] = decide_service(ServiceState(), create("a", spec(None)), ports=pool.of(ref("a")))
    assert isinstance(event, m.ServiceCreated)
    [port] = event.spec["ports"]
    assert 30000 <= port["nodePort"] <= 32767
    assert port == {"port": 22, "targetPort": 22, "protocol": "TCP", "nodePort": port["nodePort"]}
    assert ports_text(event.spec) == f"22:{port['nodePort']}/TCP"
    assert (external_ip(event.spec), external_ip(spec(None, kind="LoadBalancer"))) == (
        "<none>", "<pending>")  # fmt: skip
    # A ClusterIP Service takes none, and shows none.
    [plain] = decide_service(ServiceState(), create("b", spec(None, kind="ClusterIP")))
    assert isinstance(plain, m.ServiceCreated) and ports_text(plain.spec) == "22/TCP"


def ref(name: str) -> Ref:
    return Ref("service", "default", name)


def test_ports_are_unique_while_decided_and_once_folded_and_free_again_when_deleted() -> None:
    pool = NodePortPool(rng=random.Random(1))
    # Two Services judged side by side, neither folded yet: never the same port.
    a = pool.take("virt.service.default.a", [None, None])
    b = pool.take("virt.service.default.b", [None])
    assert len(set(a + b)) == 3
    # The same judgement again (after a conflict) keeps what it took.
    assert pool.take("virt.service.default.a", [None, None]) == a
    # Asked for while decided by another, then once folded: refused, naming the field.
    with pytest.raises(ValidationError) as taken:
        pool.take("virt.service.default.c", [30000, b[0]])
    assert (str(taken.value), taken.value.field) == (
        f"spec.ports[1].nodePort: Invalid value: {b[0]}: provided port is already allocated",
        "spec.ports[1].nodePort")  # fmt: skip
    svc_b = created("b", spec(b[0]))
    pool.folded("virt.service.default.b", svc_b)
    with pytest.raises(ValidationError, match="provided port is already allocated"):
        pool.take("virt.service.default.c", [b[0]])
    # Deleted: its port is free for the asking.
    pool.folded("virt.service.default.b", deleted(svc_b))
    assert pool.take("virt.service.default.c", [b[0]]) == [b[0]]
    # A judgement that recorded nothing gives its ports back.
    pool.forget("virt.service.default.a")
    assert pool.take("virt.service.default.d", a) == a


def test_out_of_range_duplicate_and_forbidden_node_ports_are_refused_naming_the_field() -> None:
    pool = NodePortPool()
    cases = [
        (spec(80), f"spec.ports[0].nodePort: Invalid value: 80: {RANGE_SAYS}",
         "spec.ports[0].nodePort"),
        (spec(None, 32768), f"spec.ports[1].nodePort: Invalid value: 32768: {RANGE_SAYS}",
         "spec.ports[1].nodePort"),
        (spec(30005, 30005), "spec.ports[1].nodePort: Duplicate value: 30005",
         "spec.ports[1].nodePort"),
        (spec(30005, kind="ClusterIP"), "spec.ports[0].nodePort: Forbidden: may not be used when "
         "`type` is 'ClusterIP'", "spec.ports[0].nodePort"),
        (spec(None, kind="ExternalName"), 'spec.type: Unsupported value: "ExternalName": '
         'supported values: "ClusterIP", "LoadBalancer", "NodePort"', "spec.type"),
    ]  # fmt: skip
    for s, says, field in cases:
        with pytest.raises(ValidationError) as err:
            decide_service(ServiceState(), create("x", s), ports=pool.of(ref("x")))
        assert (str(err.value), err.value.field) == (says, field)
    # And with no pool to take from (no controller beside the intake), a NodePort Service is
    # refused rather than recorded without its ports.
    with pytest.raises(ValidationError, match=r"^spec\.type: nodePorts are allocated where"):
        decide_service(ServiceState(), create("x", spec(None)))


def test_holders_give_each_port_to_its_first_service() -> None:
    first, later = created("first", spec(30100), second=1), created("later", spec(30100), second=2)
    other = created("other", spec(30101, kind="LoadBalancer"), second=3)
    found = holders([later, other, first, created("plain", spec(None, kind="ClusterIP"))])
    assert {p: s.name for p, s in found.items()} == {30100: "first", 30101: "other"}
    assert node_ports(deleted(first)) == []


async def test_services_created_at_once_never_share_a_port(cluster: Cluster) -> None:
    names = [f"s{i}" for i in range(12)]
    outcomes = await asyncio.gather(*(cluster.send(create(n, spec(None))) for n in names))
    assert all(o.accepted for o in outcomes)
    ports = []
    for n in names:
        [rec] = await cluster.store.read(ref(n))
        assert isinstance(rec.envelope.data, m.ServiceCreated)
        ports.append(rec.envelope.data.spec["ports"][0]["nodePort"])
    assert len(set(ports)) == len(names) and all(30000 <= p <= 32767 for p in ports)
    # Two asking for one port at once: exactly one has it; the other is told why.
    asked = spec(31999)
    both = await asyncio.gather(cluster.send(create("x", asked)), cluster.send(create("y", asked)),
                                return_exceptions=True)  # fmt: skip
    refused = [str(r) for r in both if isinstance(r, Rejected)]
    assert refused == ["spec.ports[0].nodePort: Invalid value: 31999: provided port is already "
                       "allocated"], both  # fmt: skip
    winner = "x" if isinstance(both[0], c.Outcome) else "y"
    # Deleted, the port is free: the loser asks again and has it.
    await cluster.send(c.DeleteService(name=winner))
    loser = "y" if winner == "x" else "x"
    assert (await cluster.send(create(loser, asked))).accepted
