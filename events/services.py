"""Services (`virtctl expose`, `kubectl get|describe|delete svc`): a name for a VM's ports.

virtbus has no service addresses: each VMI already has an address of its own on the VM network,
reached from the hosts (README "Real guests"). So a virtbus Service is what Kubernetes calls
headless (`clusterIP: None`): a recorded object with a history that names the VM (or VMI) and its
ports; its endpoint is the VMI's address while one runs. A `NodePort` (or `LoadBalancer`, whose
external address stays pending as on a cluster without a load-balancer controller) Service also
holds a `nodePort` per port, written into the recorded spec when the Service is created: every
node worker listens there and forwards to the endpoint (workers/nodeports.py). Which ports are
free is the fold of every Service; the pool that judges against it is orchestrator/nodeports.py.
Pure: the fold, the decision, the object as kubectl shows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import msgspec
from msgspec.structs import replace

from events import commands as c
from events import model as m
from events.envelope import Envelope
from events.errors import ValidationError

TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer")
NODE_PORT_TYPES: Final = ("NodePort", "LoadBalancer")
HEADLESS: Final = "None"
NODE_PORT_RANGE: Final = range(30000, 32768)  # kube-apiserver's --service-node-port-range default


class PortPicker(Protocol):
    """Where a Service's nodePorts come from: the cluster's pool as one Service sees it."""

    def take(self, asked: list[int | None]) -> list[int]:
        """A nodePort for each port: the one asked (refused if out of range or held by another
        Service), else a free one; raises ValidationError naming `spec.ports[i].nodePort`."""
        ...


class ServiceState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    namespace: str = ""
    name: str = ""
    version: int = 0
    exists: bool = False
    spec: dict[str, Any] = {}
    vm: str = ""
    vm_kind: str = "VirtualMachine"
    created: datetime | None = None


def apply_service(s: ServiceState, env: Envelope) -> ServiceState:
    e = env.data
    _, namespace, name = env.subject.split("/")  # service/NAMESPACE/NAME
    s = replace(s, namespace=namespace, name=name, version=env.version)
    if isinstance(e, m.ServiceCreated):
        return replace(s, exists=True, spec=e.spec, vm=e.vm, vm_kind=e.vm_kind, created=env.time)
    if isinstance(e, m.ServiceDeleted):
        return replace(s, exists=False)
    return s


def node_ports(s: ServiceState) -> list[int]:
    """The nodePorts the Service holds (none once deleted, or for a ClusterIP Service)."""
    if not s.exists or s.spec.get("type") not in NODE_PORT_TYPES:
        return []
    return [p["nodePort"] for p in s.spec.get("ports", []) if isinstance(p.get("nodePort"), int)]


def holders(services: Iterable[ServiceState]) -> dict[int, ServiceState]:
    """Which Service each nodePort is for: its first holder by creation. (Two holders of one port
    arise only from two orchestrators judging at once across a lease change; the later one's port
    forwards nothing until it is deleted.)"""
    found: dict[int, ServiceState] = {}
    first = datetime.min.replace(tzinfo=UTC)
    for s in sorted(services, key=lambda s: (s.created or first, s.namespace, s.name)):
        for port in node_ports(s):
            found.setdefault(port, s)
    return found


def out_of_range(i: int, port: int) -> ValidationError:
    return ValidationError(f"spec.ports[{i}].nodePort: Invalid value: {port}: provided port is "
                           "not in the valid range. The range of valid ports is "
                           f"{NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[-1]}",
                           field=f"spec.ports[{i}].nodePort")  # fmt: skip


def already_allocated(i: int, port: int) -> ValidationError:
    return ValidationError(f"spec.ports[{i}].nodePort: Invalid value: {port}: provided port is "
                           "already allocated", field=f"spec.ports[{i}].nodePort")  # fmt: skip


def check_spec(spec: dict[str, Any]) -> None:
    """What virtbus's services can be: headless, TCP or UDP ports of 1-65535, nodePorts only on
    a NodePort or LoadBalancer Service, each in the range and asked once."""
    kind = spec.get("type", "ClusterIP")
    if kind not in TYPES:
        supported = ", ".join(f'"{t}"' for t in sorted(TYPES))
        raise ValidationError(f'spec.type: Unsupported value: "{kind}": supported values: '
                              f"{supported}", field="spec.type")  # fmt: skip
    ports = spec.get("ports")
    if not isinstance(ports, list) or not ports:
        raise ValidationError("spec.ports: Required value", field="spec.ports")
    for i, p in enumerate(ports):
        port = p.get("port") if isinstance(p, dict) else None
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValidationError(f"spec.ports[{i}].port: Invalid value: {port!r}: must be "
                                  "between 1 and 65535, inclusive", field="spec.ports")  # fmt: skip
        if p.get("protocol", "TCP") not in ("TCP", "UDP"):
            raise ValidationError(f"spec.ports[{i}].protocol: Unsupported value: "
                                  f'"{p.get("protocol")}"', field="spec.ports")  # fmt: skip
    _check_node_ports(kind, ports)


def _check_node_ports(kind: str, ports: list[dict[str, Any]]) -> None:
    seen: set[int] = set()
    for i, p in enumerate(ports):
        asked = p.get("nodePort")
        if asked is None or asked == 0:  # 0: "pick one", as the API server reads it
            continue
        field = f"spec.ports[{i}].nodePort"
        if kind not in NODE_PORT_TYPES:
            raise ValidationError(f"{field}: Forbidden: may not be used when `type` is "
                                  f"'{kind}'", field=field)  # fmt: skip
        if not isinstance(asked, int) or isinstance(asked, bool):
            raise ValidationError(f"{field}: Invalid value: {asked!r}: must be a number",
                                  field=field)  # fmt: skip
        if asked not in NODE_PORT_RANGE:
            raise out_of_range(i, asked)
        if asked in seen:
            raise ValidationError(f"{field}: Duplicate value: {asked}", field=field)
        seen.add(asked)


def decide_service(
    s: ServiceState, cmd: c.Command, *, ports: PortPicker | None = None
) -> list[m.Event]:
    """`ports`: the pool a NodePort Service's ports are taken from (none: such a Service is
    refused, as where no controller runs to keep them unique)."""
    match cmd:
        case c.CreateService():
            if s.exists:
                raise ValidationError(f'services "{cmd.name}" already exists', field="name")
            check_spec(cmd.spec)
            spec = cmd.spec
            if spec.get("type") in NODE_PORT_TYPES:
                if ports is None:
                    raise ValidationError("spec.type: nodePorts are allocated where a "
                                          "controller runs", field="spec.type")  # fmt: skip
                asked = [p.get("nodePort") or None for p in spec["ports"]]
                taken = ports.take(asked)
                given = zip(spec["ports"], taken, strict=True)
                spec = {**spec, "ports": [{**p, "nodePort": n} for p, n in given]}
            return [m.ServiceCreated(spec=spec, vm=cmd.vm, vm_kind=cmd.vm_kind)]
        case c.DeleteService():
            if not s.exists:
                raise ValidationError(f'services "{cmd.name}" not found', field="name")
            return [m.ServiceDeleted()]
    raise ValidationError(f"{type(cmd).__name__} does not apply to a Service", field="kind")


def ports_text(spec: dict[str, Any]) -> str:
    """kubectl's PORT(S) column: `22/TCP,80/TCP`, with the nodePort: `22:31234/TCP`."""
    return ",".join(
        f"{p.get('port')}{f':{n}' if (n := p.get('nodePort')) else ''}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports", [])
    )


def external_ip(spec: dict[str, Any]) -> str:
    """kubectl's EXTERNAL-IP column: a LoadBalancer's address stays `<pending>` (no load-balancer
    controller gives one), the rest have `<none>`."""
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def service_object(s: ServiceState, *, endpoint: str = "") -> dict[str, Any]:
    """The Service as `kubectl get svc NAME -o yaml` shows it; `endpoint` is the VMI's address
    (virtbus's `status.endpoint`, "" while no instance runs)."""
    owner = {"apiVersion": "kubevirt.io/v1", "kind": s.vm_kind, "name": s.vm,
             "controller": True, "blockOwnerDeletion": False}  # fmt: skip
    meta = {"name": s.name, "namespace": s.namespace, "ownerReferences": [owner],
            "resourceVersion": str(s.version)}  # fmt: skip
    if s.created is not None:
        meta["creationTimestamp"] = s.created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": dict(s.spec),
        "status": {"loadBalancer": {}, **({"endpoint": endpoint} if endpoint else {})},
    }
