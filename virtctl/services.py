"""Services over the bus: `expose vm|vmi NAME --port P`, and `get|describe|delete svc`.

A Service is folded from its own subjects (`virt.service.<ns>.<name>`, events/services.py); its
endpoint is the address of the VM's running instance, read from the VM's fold. `expose` checks
the VM exists first, as virtctl fetches it before creating the Service.
"""

from __future__ import annotations

import typer
from nats.aio.client import Client

from bus.client import send, session
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events import render
from events.envelope import Recorded
from events.errors import ValidationError, VirtbusError
from events.names import Ref, aggregate_key, check_name
from events.services import (
    HEADLESS,
    ServiceState,
    apply_service,
    external_ip,
    ports_text,
    service_object,
)
from virtctl import kinds as k
from virtctl.listing import Item, Listing
from virtctl.portspec import PortSpec

HEADER = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
_VM_WORDS = {"vm": "VirtualMachine", "vms": "VirtualMachine", "virtualmachine": "VirtualMachine",
             "virtualmachines": "VirtualMachine", "vmi": "VirtualMachineInstance",
             "vmis": "VirtualMachineInstance", "virtualmachineinstance": "VirtualMachineInstance",
             "virtualmachineinstances": "VirtualMachineInstance"}  # fmt: skip


async def endpoint(nc: Client, svc: ServiceState) -> str:
    """The VMI's address while it runs (the headless service's one endpoint), else ""."""
    s, _ = await VMRepository(EventStore(nc)).get(Ref.vm(svc.vm, svc.namespace))
    return s.ip if s.exists and s.ip else ""


async def listing(nc: Client, *, name: str | None, namespace: str | None) -> Listing:
    found: dict[str, ServiceState] = {}

    def on(rec: Recorded) -> None:
        key = aggregate_key(rec.subject)
        found[key] = apply_service(found.get(key) or ServiceState(), rec.envelope)

    where = f"{namespace}.{check_name(name, field='name')}" if namespace and name else (
        namespace or "*")  # fmt: skip
    await EventStore(nc).replay(on, subjects=[f"virt.service.{where}.>"], verify=False)
    items = []
    for s in sorted(found.values(), key=lambda s: (s.namespace, s.name)):
        if not s.exists or name not in (None, s.name):
            continue
        obj = service_object(s, endpoint=await endpoint(nc, s))
        cells = [s.name, s.spec.get("type", "ClusterIP"), HEADLESS, external_ip(s.spec),
                 ports_text(s.spec), render.age(s.created)]  # fmt: skip
        items.append(Item(s.namespace, s.name, {}, obj, cells))
    return Listing(k.SERVICE, HEADER, items)


async def expose(
    url: str, *, what: str, name: str, namespace: str, service: str, port: int, target_port: str,
    protocol: str, kind_of_service: str, port_name: str, actor: str,
) -> int:  # fmt: skip
    vm_kind = _VM_WORDS.get(what.lower())
    if vm_kind is None:
        raise ValidationError(f"unsupported resource type: {what}", field="kind")
    if not service:
        raise ValidationError('required flag(s) "name" not set', field="name")
    if port == 0:
        raise ValidationError("couldn't find port via --port flag or introspection", field="port")
    entry: dict[str, object] = {"protocol": protocol.upper(), "port": port,
                                "targetPort": int(target_port) if target_port.isdigit()
                                else (target_port or port)}  # fmt: skip
    if port_name:
        entry["name"] = port_name
    spec = {"clusterIP": HEADLESS, "ports": [entry], "type": kind_of_service,
            "selector": {"kubevirt.io/vm": name}}  # fmt: skip
    async with session(url) as nc:
        s, _ = await VMRepository(EventStore(nc)).get(Ref.vm(name, namespace))
        if not s.exists or (vm_kind == "VirtualMachineInstance" and not s.phase):
            noun = "VirtualMachineInstance" if vm_kind != "VirtualMachine" else "VirtualMachine"
            kind = "virtualmachineinstances" if noun != "VirtualMachine" else "virtualmachines"
            raise VirtbusError(f'error fetching {noun}: {kind}.kubevirt.io "{name}" not found')
        cmd = c.CreateService(name=service, namespace=namespace, spec=spec, vm=name,
                              vm_kind=vm_kind, actor=actor)  # fmt: skip
        try:
            await send(nc, cmd)
        except VirtbusError as err:
            raise VirtbusError(f"service creation failed: {err}") from err
    typer.echo(f"Service {service} successfully created for {what.lower()} {name}")
    return 0


async def forward_target(
    url: str, *, name: str, namespace: str, ports: list[PortSpec]
) -> tuple[str, list[PortSpec]]:
    """`port-forward svc/NAME [LOCAL:]PORT` as kubectl reads it: the Service's VM, and each
    service port turned into its target port on the VM."""
    async with session(url) as nc:
        found = (await listing(nc, name=name, namespace=namespace)).items
    if not found:
        raise VirtbusError(k.SERVICE.not_found(name))
    svc = found[0].obj
    by_port = {p.get("port"): p.get("targetPort", p.get("port")) for p in svc["spec"]["ports"]}
    mapped = []
    for spec in ports:
        port = spec.remote
        target = by_port.get(port)
        if not isinstance(target, int):
            raise VirtbusError(f"Service {name} does not have a service port {port}"
                               if target is None else f"Service {name}'s port {port} targets "
                               f"{target!r}: virtbus forwards to numbered ports only")  # fmt: skip
        mapped.append(spec._replace(remote=target))
    return svc["metadata"]["ownerReferences"][0]["name"], mapped
