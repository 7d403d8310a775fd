"""`virtbus create instancetype` and `create preference`: virtctl's generators of the
instancetype.kubevirt.io kinds; they print a manifest and create nothing.

Flags, defaults (a cluster-wide kind named `clusterinstancetype-xxxxx`/`clusterpreference-xxxxx`;
`--namespaced`, or a namespace other than the default, for the namespaced kind), parameters and
messages are virtctl's, so a line of the user guide piped into `virtbus apply -f -` gives the
object it gives there. `--gpu` and `--hostdevice` are refused by name, as `apply` would refuse the
instance type they write (virtbus passes no devices through). Pure: no bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from events.errors import ValidationError
from events.names import check_name
from events.quantity import parse_quantity
from virtctl.createvm import flag_error, params, suffix

API_VERSION: Final = "instancetype.kubevirt.io/v1beta1"
IO_THREADS: Final = ("auto", "shared")  # what virtctl's flag offers (not `dedicated`)
# KubeVirt's preferred topologies, with the older `prefer*` spellings its validation still takes.
TOPOLOGIES: Final = frozenset(
    {
        "sockets",
        "cores",
        "threads",
        "spread",
        "any",
        "preferSockets",
        "preferCores",
        "preferThreads",
        "preferSpread",
        "preferAny",
    }
)
_DEVICES: Final = {
    "gpu": "virtbus passes no GPUs through (its nodes have no device plugins)",
    "hostdevice": "virtbus passes no host devices through (its nodes have no device plugins)",
}


@dataclass(kw_only=True)
class InstancetypeFlags:
    name: str = ""
    cpu: int | None = None
    memory: str = ""
    namespaced: bool = False
    namespace: str = ""  # given with -n: the namespaced kind, in that namespace
    gpus: list[str] = field(default_factory=list)
    host_devices: list[str] = field(default_factory=list)
    io_threads_policy: str | None = None


@dataclass(kw_only=True)
class PreferenceFlags:
    name: str = ""
    namespaced: bool = False
    namespace: str = ""
    cpu_topology: str | None = None
    volume_storage_class: str | None = None
    machine_type: str | None = None


def _metadata(*, name: str, namespace: str) -> dict[str, Any]:
    check_name(name, field="name")
    meta: dict[str, Any] = {"creationTimestamp": None, "name": name}
    if namespace:
        meta["namespace"] = namespace
    return meta


def instancetype(flags: InstancetypeFlags) -> dict[str, Any]:
    """The object virtctl's `create instancetype` prints (ValidationError naming the flag)."""
    flagged = {"cpu": flags.cpu is not None, "memory": bool(flags.memory)}
    if missing := [n for n, g in flagged.items() if not g]:
        said = ", ".join(f'"{n}"' for n in missing)
        raise ValidationError(f"required flag(s) {said} not set", field=missing[0])
    try:
        parse_quantity(flags.memory)
    except ValidationError as err:
        raise flag_error("memory", err.message) from None
    if flags.cpu is None or flags.cpu <= 0:
        raise ValidationError("cpu value must be greater than zero", field="cpu")
    for flag, devices in (("gpu", flags.gpus), ("hostdevice", flags.host_devices)):
        for text in devices:  # parsed as virtctl does first: a malformed one says so
            p = params(flag, text, known=("name", "devicename"))
            if not p.get("name"):
                raise flag_error(flag, "name must be specified")
            if not p.get("devicename"):
                raise flag_error(flag, "deviceName must be specified")
        if devices:
            raise ValidationError(f"--{flag}: {_DEVICES[flag]}; an instance type with "
                                  f"{'GPUs' if flag == 'gpu' else 'host devices'} would be "
                                  "refused by apply", field=flag)  # fmt: skip
    spec: dict[str, Any] = {"cpu": {"guest": flags.cpu}, "memory": {"guest": flags.memory}}
    if flags.io_threads_policy is not None:
        if flags.io_threads_policy not in IO_THREADS:
            raise flag_error("iothreadspolicy", "IOThread must be of value auto or shared")
        spec["ioThreadsPolicy"] = flags.io_threads_policy
    namespaced = flags.namespaced or bool(flags.namespace)
    kind = "VirtualMachineInstancetype" if namespaced else "VirtualMachineClusterInstancetype"
    name = flags.name or ("instancetype-" if namespaced else "clusterinstancetype-") + suffix()
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": _metadata(name=name, namespace=flags.namespace), "spec": spec}  # fmt: skip


def preference(flags: PreferenceFlags) -> dict[str, Any]:
    """The object virtctl's `create preference` prints (ValidationError naming the flag)."""
    spec: dict[str, Any] = {}
    if flags.cpu_topology is not None:
        if flags.cpu_topology not in TOPOLOGIES:
            raise flag_error(
                "cpu-topology",
                "CPU topology must have a value of sockets, cores, threads or spread",
            )
        spec["cpu"] = {"preferredCPUTopology": flags.cpu_topology}
    if flags.machine_type is not None:
        spec["machine"] = {"preferredMachineType": flags.machine_type}
    if flags.volume_storage_class is not None:
        spec["volumes"] = {"preferredStorageClassName": flags.volume_storage_class}
    namespaced = flags.namespaced or bool(flags.namespace)
    kind = "VirtualMachinePreference" if namespaced else "VirtualMachineClusterPreference"
    name = flags.name or ("preference-" if namespaced else "clusterpreference-") + suffix()
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": _metadata(name=name, namespace=flags.namespace), "spec": spec}  # fmt: skip


def dump(obj: dict[str, Any]) -> str:
    """As Go's YAML marshalling writes it: keys in order, an empty spec as `{}`."""
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False)
