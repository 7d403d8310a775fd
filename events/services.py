"""Services (`virtctl expose`, `kubectl get|describe|delete svc`): a name for a VM's ports.

virtbus has no kube-proxy and no service addresses: each VMI already has an address of its own on
the VM network, reached from the hosts (README "Real guests"). So a virtbus Service is what
Kubernetes calls headless (`clusterIP: None`): a recorded object with a history that names the
VM (or VMI) and its ports; its endpoint is the VMI's address while one runs. `NodePort` and
`LoadBalancer` are refused rather than accepted without the forwarding they promise. Pure: the
fold, the decision, the object as kubectl shows it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from events import commands as c
from events import model as m
from events.envelope import Envelope
from events.errors import ValidationError

TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer")
HEADLESS: Final = "None"


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


def check_spec(spec: dict[str, Any]) -> None:
    """What virtbus's services can be: headless, TCP or UDP ports of 1-65535."""
    kind = spec.get("type", "ClusterIP")
    if kind != "ClusterIP":
        raise ValidationError(f'spec.type: "{kind}": virtbus\'s services are headless '
                              "(clusterIP None): the VMI's address is reached from every node on "
                              "its own port; use ClusterIP, or `virtbus port-forward`",
                              field="spec.type")  # fmt: skip
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


def decide_service(s: ServiceState, cmd: c.Command) -> list[m.Event]:
    match cmd:
        case c.CreateService():
            if s.exists:
                raise ValidationError(f'services "{cmd.name}" already exists', field="name")
            check_spec(cmd.spec)
            return [m.ServiceCreated(spec=cmd.spec, vm=cmd.vm, vm_kind=cmd.vm_kind)]
        case c.DeleteService():
            if not s.exists:
                raise ValidationError(f'services "{cmd.name}" not found', field="name")
            return [m.ServiceDeleted()]
    raise ValidationError(f"{type(cmd).__name__} does not apply to a Service", field="kind")


def ports_text(spec: dict[str, Any]) -> str:
    """kubectl's PORT(S) column: `22/TCP,80/TCP`."""
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))


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
