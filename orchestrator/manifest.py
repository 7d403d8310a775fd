"""KubeVirt manifests in, virtbus commands out.

Users bring the YAML they already write for KubeVirt. This module is the one place that reads it:
it checks what virtbus relies on (names, disks against volumes, interfaces against networks,
quantities), rejects what KubeVirt itself would reject with a `ValidationError` naming the field,
and warns about every field it does not know instead of dropping it silently.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import yaml

from events.commands import (
    ApplyReplicaSet,
    ApplyVM,
    Command,
    MigrateVM,
    RestoreVM,
    SnapshotVM,
)
from events.errors import ValidationError
from events.names import check_name
from events.quantity import parse_quantity


def _names(text: str) -> frozenset[str]:
    """A set of field names written as one space-separated string, to keep the tables short."""
    return frozenset(text.split())


API_VERSION: Final = "kubevirt.io/v1"
DEPRECATED_API_VERSIONS: Final = frozenset({"kubevirt.io/v1alpha3"})
SNAPSHOT_API_VERSION: Final = "snapshot.kubevirt.io/v1beta1"
SNAPSHOT_KINDS: Final = ("VirtualMachineSnapshot", "VirtualMachineRestore")
RUN_STRATEGIES: Final = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")
VOLUME_SOURCES: Final = _names(
    "containerDisk persistentVolumeClaim hostDisk cloudInitNoCloud emptyDisk dataVolume "
    "ephemeral cloudInitConfigDrive configMap secret serviceAccount downwardAPI "
    "downwardMetrics memoryDump sysprep"
)
DISK_TYPES: Final = ("disk", "cdrom", "lun")
BUSES: Final = ("virtio", "sata", "scsi", "usb")
BINDINGS: Final = ("masquerade", "bridge", "sriov", "slirp", "passt")
NIC_MODELS: Final = _names("e1000 virtio e1000e rtl8139 pcnet ne2k_pci")
HOST_DISK_TYPES: Final = ("Disk", "DiskOrCreate")
MAX_REPLICAS: Final = 10_000  # events.commands.Replicas allows no more
KINDS: Final = ("VirtualMachine", "VirtualMachineInstance", "VirtualMachineInstanceReplicaSet",
                "VirtualMachineInstanceMigration", *SNAPSHOT_KINDS)  # fmt: skip

# Known field names per level: virtbus acts on some and tolerates the rest; anything else warns.
_METADATA: Final = _names(
    "name namespace labels annotations generateName uid resourceVersion generation "
    "creationTimestamp deletionTimestamp finalizers ownerReferences managedFields"
)
_TOP: Final = _names("apiVersion kind metadata spec status")
_VM_SPEC: Final = _names(
    "running runStrategy template dataVolumeTemplates instancetype preference "
    "updateVolumesStrategy liveUpdateFeatures"
)
_TEMPLATE: Final = _names("metadata spec")
_VMI_SPEC: Final = _names(
    "domain volumes networks nodeSelector affinity tolerations terminationGracePeriodSeconds "
    "hostname subdomain readinessProbe livenessProbe accessCredentials evictionStrategy "
    "schedulerName priorityClassName dnsPolicy dnsConfig startStrategy "
    "topologySpreadConstraints architecture resourceClaims"
)
_DOMAIN: Final = _names(
    "cpu memory resources devices machine firmware clock features chassis ioThreadsPolicy "
    "ioThreads launchSecurity"
)
_DEVICES: Final = _names(
    "disks interfaces inputs rng gpus hostDevices filesystems watchdog sound tpm "
    "clientPassthrough autoattachGraphicsDevice autoattachSerialConsole autoattachMemBalloon "
    "autoattachPodInterface autoattachInputDevice autoattachVSOCK networkInterfaceMultiqueue "
    "blockMultiQueue disableHotplug useVirtioTransitional logSerialConsole downwardMetrics "
    "video"
)
_DISK: Final = _names(
    "name bootOrder serial dedicatedIOThread cache io tag blockSize shareable errorPolicy"
) | frozenset(DISK_TYPES)
_DISK_TARGET: Final = _names("bus readonly pciAddress tray reservation")
_INTERFACE: Final = _names(
    "name binding model macAddress ports pciAddress bootOrder dhcpOptions tag acpiIndex state"
) | frozenset(BINDINGS)
_NETWORK: Final = _names("name pod multus")
_CPU: Final = _names(
    "cores sockets threads model features dedicatedCpuPlacement isolateEmulatorThread numa "
    "realtime maxSockets"
)
_MEMORY: Final = _names("guest hugepages maxGuest")
_RESOURCES: Final = _names("requests limits overcommitGuestOverhead")
_HOST_DISK: Final = _names("path type capacity shared")
_RS_SPEC: Final = _names("replicas selector template paused")
_MIGRATION_SPEC: Final = _names("vmiName addedNodeSelector")
_SNAPSHOT_SPEC: Final = _names("source deletionPolicy failureDeadline")
_RESTORE_SPEC: Final = _names("target virtualMachineSnapshotName patches targetReadinessPolicy")


def _fail(field: str, reason: str) -> ValidationError:
    return ValidationError(f"{field}: {reason}", field=field)


def parse_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML text; a top-level list or a `kind: List`
    contributes its items, as `kubectl apply` does."""
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise _fail("yaml", f"{where}: {exc.problem or exc.context or 'invalid YAML'}") from exc
    except yaml.YAMLError as exc:
        raise _fail("yaml", str(exc)) from exc
    docs: list[dict[str, Any]] = []
    for i, doc in enumerate(raw):
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else doc
        for j, item in enumerate(items if isinstance(items, list) else [items]):
            if item is None:
                continue
            if not isinstance(item, dict):
                where = f"documents[{i}]" + (f"[{j}]" if isinstance(items, list) else "")
                raise _fail(where, f"expected a mapping, got {type(item).__name__}")
            docs.append(item)
    return docs


def run_strategy_of(spec: dict[str, Any]) -> str:
    """The effective run strategy of a VM spec; `running` is KubeVirt's older spelling of it."""
    if spec.get("runStrategy") is not None:
        return str(spec["runStrategy"])
    return "Always" if spec.get("running") is True else "Halted"


def summarize(spec: dict[str, Any]) -> dict[str, Any]:
    """What the scheduler needs from a VM spec (or a bare VMI spec): memory, vCPUs, selector."""
    vmi = (spec.get("template") or {}).get("spec") or {} if "template" in spec else spec
    domain = vmi.get("domain") or {}
    cpu = domain.get("cpu") or {}
    # The scheduler reserves what the pod would request; guest memory stands in when unset.
    memory = ((domain.get("resources") or {}).get("requests") or {}).get("memory")
    memory = memory if memory is not None else (domain.get("memory") or {}).get("guest")
    return {
        "memory_bytes": 0 if memory is None else parse_quantity(memory, field="memory"),
        "cpus": int(cpu.get("cores", 1)) * int(cpu.get("sockets", 1)) * int(cpu.get("threads", 1)),
        "node_selector": dict(vmi.get("nodeSelector") or {}),
    }


def to_commands(
    doc: dict[str, Any], *, default_namespace: str = "default"
) -> tuple[list[Command], list[str]]:
    """The commands one manifest stands for, plus warnings about what virtbus ignores."""
    if not isinstance(doc, dict):
        raise _fail("document", f"expected a mapping, got {type(doc).__name__}")
    reader = _Reader()
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if kind in SNAPSHOT_KINDS:
        if api == "snapshot.kubevirt.io/v1alpha1":
            reader.warn("apiVersion", f"{api} is deprecated; read as {SNAPSHOT_API_VERSION}")
        elif api != SNAPSHOT_API_VERSION:
            raise _fail("apiVersion", f"{api!r} is not supported for {kind}; use "
                                      f"{SNAPSHOT_API_VERSION}")  # fmt: skip
    elif api in DEPRECATED_API_VERSIONS:
        reader.warn("apiVersion", f"{api} is deprecated; read as {API_VERSION}")
    elif api != API_VERSION:
        raise _fail("apiVersion", f"{api!r} is not supported; use {API_VERSION}")
    if kind not in KINDS:
        raise _fail("kind", f"{kind!r} is not supported; use one of {', '.join(KINDS)}")
    reader.section(doc, "", fields=_TOP)
    meta = reader.section(doc.get("metadata"), "metadata", fields=_METADATA)
    name = check_name(meta.get("name") or "", field="metadata.name")
    namespace = check_name(meta.get("namespace", default_namespace), field="metadata.namespace")
    labels = _strings(meta.get("labels"), "metadata.labels")
    annotations = _strings(meta.get("annotations"), "metadata.annotations")
    # Deep-copied so the command never aliases the caller's document.
    spec = copy.deepcopy(_mapping(doc.get("spec"), "spec"))
    cmd: Command
    if kind == "VirtualMachine":
        reader.section(spec, "spec", fields=_VM_SPEC)
        _check_run_strategy(spec)
        reader.template(spec.get("template"), "spec.template", sized="instancetype" in spec)
        cmd = ApplyVM(
            name=name, namespace=namespace, spec=spec, labels=labels, annotations=annotations
        )
    elif kind == "VirtualMachineInstance":
        reader.vmi_spec(spec, "spec", sized=False)
        # Reshaped as a run-once VM, so the rest of virtbus only ever sees VM specs.
        template = {"metadata": {"labels": dict(labels)}, "spec": spec}
        cmd = ApplyVM(
            name=name, namespace=namespace, spec={"runStrategy": "Once", "template": template},
            labels=labels, annotations=annotations, source_kind="VirtualMachineInstance",
        )  # fmt: skip
    elif kind == "VirtualMachineInstanceReplicaSet":
        reader.section(spec, "spec", fields=_RS_SPEC)
        replicas = spec.setdefault("replicas", 1)
        if not _is_int(replicas) or not 0 <= replicas <= MAX_REPLICAS:
            raise _fail("spec.replicas", f"{replicas!r} must be an integer, 0 to {MAX_REPLICAS}")
        reader.template(spec.get("template"), "spec.template", sized=False)
        cmd = ApplyReplicaSet(name=name, namespace=namespace, spec=spec, labels=labels)
    elif kind == "VirtualMachineInstanceMigration":
        reader.section(spec, "spec", fields=_MIGRATION_SPEC)
        vmi = check_name(spec.get("vmiName") or "", field="spec.vmiName")
        cmd = MigrateVM(name=vmi, namespace=namespace, migration=name)
    elif kind == "VirtualMachineSnapshot":
        reader.section(spec, "spec", fields=_SNAPSHOT_SPEC)
        vm = _vm_reference(spec.get("source"), "spec.source")
        cmd = SnapshotVM(name=vm, namespace=namespace, snapshot=name)
    else:  # VirtualMachineRestore
        reader.section(spec, "spec", fields=_RESTORE_SPEC)
        vm = _vm_reference(spec.get("target"), "spec.target")
        snap = check_name(spec.get("virtualMachineSnapshotName") or "",
                          field="spec.virtualMachineSnapshotName")  # fmt: skip
        cmd = RestoreVM(name=vm, namespace=namespace, snapshot=snap, restore=name)
    return [cmd], reader.warns


# --- checks --------------------------------------------------------------------------------------


def _vm_reference(ref: Any, path: str) -> str:
    """A snapshot's source or a restore's target: virtbus snapshots VirtualMachines only."""
    ref = _mapping(ref, path)
    if ref.get("kind", "VirtualMachine") != "VirtualMachine":
        raise _fail(f"{path}.kind", f"{ref.get('kind')!r}: only VirtualMachine can be snapshotted")
    if ref.get("apiGroup", "kubevirt.io") != "kubevirt.io":
        raise _fail(f"{path}.apiGroup", f"{ref.get('apiGroup')!r}: use kubevirt.io")
    return check_name(ref.get("name") or "", field=f"{path}.name")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:  # `masquerade:` with nothing after it means an empty mapping in KubeVirt
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _strings(value: Any, path: str) -> dict[str, str]:
    mapping = _mapping(value, path)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise _fail(f"{path}.{key}", f"{item!r} must be a string (quote it in YAML)")
    return dict(mapping)


def _named(obj: dict[str, Any], path: str, *, seen: set[str]) -> str:
    """The entry's name, which must be new to `seen`; it is added there."""
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(f"{path}.name", "a name is required")
    if name in seen:
        raise _fail(f"{path}.name", f"{name!r} is used twice")
    seen.add(name)
    return name


def _check_run_strategy(spec: dict[str, Any]) -> None:
    running, strategy = spec.get("running"), spec.get("runStrategy")
    if running is not None and strategy is not None:
        raise _fail("spec.running", "spec.running and spec.runStrategy are mutually exclusive")
    if running is not None and not isinstance(running, bool):
        raise _fail("spec.running", f"{running!r} must be true or false")
    if strategy is not None and strategy not in RUN_STRATEGIES:
        raise _fail("spec.runStrategy", f"{strategy!r} is not one of {', '.join(RUN_STRATEGIES)}")


class _Reader:
    """Walks one manifest, raising on what KubeVirt would reject and collecting warnings."""

    def __init__(self) -> None:
        self.warns: list[str] = []

    def warn(self, path: str, reason: str) -> None:
        self.warns.append(f"warning: {path}: {reason}")

    def section(self, value: Any, path: str, *, fields: frozenset[str]) -> dict[str, Any]:
        mapping = _mapping(value, path)
        for key in [key for key in mapping if key not in fields]:  # in document order
            self.warn(f"{path}.{key}" if path else str(key), "unknown field, ignored by virtbus")
        return mapping

    def entries(self, value: Any, path: str, *, fields: frozenset[str]) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise _fail(path, f"expected a list, got {type(value).__name__}")
        return [self.section(v, f"{path}[{i}]", fields=fields) for i, v in enumerate(value)]

    def template(self, value: Any, path: str, *, sized: bool) -> None:
        if value is None:
            raise _fail(path, "is required")
        template = self.section(value, path, fields=_TEMPLATE)
        meta = self.section(template.get("metadata"), f"{path}.metadata", fields=_METADATA)
        _strings(meta.get("labels"), f"{path}.metadata.labels")
        if template.get("spec") is None:
            raise _fail(f"{path}.spec", "is required")
        self.vmi_spec(template["spec"], f"{path}.spec", sized=sized)

    def vmi_spec(self, value: Any, path: str, *, sized: bool) -> None:
        """`sized` means an instancetype supplies CPU and memory, so the domain need not."""
        spec = self.section(value, path, fields=_VMI_SPEC)
        if spec.get("domain") is None:
            raise _fail(f"{path}.domain", "is required")
        domain = self.section(spec["domain"], f"{path}.domain", fields=_DOMAIN)
        self.resources(domain, f"{path}.domain", sized=sized)
        devices = self.section(domain.get("devices"), f"{path}.domain.devices", fields=_DEVICES)
        volumes = self.volumes(spec.get("volumes"), f"{path}.volumes")
        disks = f"{path}.domain.devices.disks"
        seen: set[str] = set()
        for i, disk in enumerate(self.entries(devices.get("disks"), disks, fields=_DISK)):
            if (name := _named(disk, at := f"{disks}[{i}]", seen=seen)) not in volumes:
                raise _fail(f"{at}.name", f"no volume named {name!r} in {path}.volumes")
            self.disk(disk, at)
        networks: set[str] = set()
        nets = f"{path}.networks"
        for i, net in enumerate(self.entries(spec.get("networks"), nets, fields=_NETWORK)):
            _named(net, f"{nets}[{i}]", seen=networks)
            if sum(key in net for key in ("pod", "multus")) != 1:
                raise _fail(f"{nets}[{i}]", "needs exactly one of pod or multus")
        nics = f"{path}.domain.devices.interfaces"
        seen = set()
        for i, nic in enumerate(self.entries(devices.get("interfaces"), nics, fields=_INTERFACE)):
            if (name := _named(nic, at := f"{nics}[{i}]", seen=seen)) not in networks:
                raise _fail(f"{at}.name", f"no network named {name!r} in {nets}")
            if sum(key in nic for key in (*BINDINGS, "binding")) > 1:
                raise _fail(at, f"has more than one binding of {', '.join(BINDINGS)}")
            if "model" in nic and not isinstance(nic["model"], str):
                raise _fail(f"{at}.model", f"expected a string, got {type(nic['model']).__name__}")
            if "model" in nic and nic["model"] not in NIC_MODELS:
                self.warn(f"{at}.model", f"unknown NIC model {nic['model']!r}")

    def resources(self, domain: dict[str, Any], path: str, *, sized: bool) -> None:
        cpu = self.section(domain.get("cpu"), f"{path}.cpu", fields=_CPU)
        for key in ("cores", "sockets", "threads"):
            if key in cpu and (not _is_int(cpu[key]) or cpu[key] < 1):
                raise _fail(f"{path}.cpu.{key}", f"{cpu[key]!r} must be a positive integer")
        memory = self.section(domain.get("memory"), f"{path}.memory", fields=_MEMORY)
        res = self.section(domain.get("resources"), f"{path}.resources", fields=_RESOURCES)
        given = {f"{path}.memory.guest": memory.get("guest")}
        for key in ("requests", "limits"):
            at = f"{path}.resources.{key}"
            given[f"{at}.memory"] = _mapping(res.get(key), at).get("memory")
        for field, value in given.items():
            if value is not None:
                parse_quantity(value, field=field)
        if not sized and all(value is None for value in given.values()):
            raise _fail(f"{path}.resources.requests.memory", f"or {path}.memory.guest is required")

    def volumes(self, value: Any, path: str) -> set[str]:
        names: set[str] = set()
        for i, vol in enumerate(self.entries(value, path, fields=VOLUME_SOURCES | {"name"})):
            _named(vol, f"{path}[{i}]", seen=names)
            sources = [key for key in vol if key in VOLUME_SOURCES]
            if len(sources) > 1:
                raise _fail(f"{path}[{i}]", f"has {len(sources)} sources ({', '.join(sources)})")
            if len(vol) == 1:  # only a name; an unknown source already warned above
                raise _fail(f"{path}[{i}]", f"needs one of {', '.join(sorted(VOLUME_SOURCES))}")
            if "hostDisk" in vol:
                self.host_disk(vol["hostDisk"], f"{path}[{i}].hostDisk")
        return names

    def host_disk(self, value: Any, path: str) -> None:
        disk = self.section(value, path, fields=_HOST_DISK)
        if not isinstance(disk.get("path"), str) or not disk["path"]:
            raise _fail(f"{path}.path", "is required")
        if disk.get("type") not in HOST_DISK_TYPES:
            allowed = ", ".join(HOST_DISK_TYPES)
            raise _fail(f"{path}.type", f"{disk.get('type')!r} is not one of {allowed}")
        if disk.get("capacity") is not None:
            parse_quantity(disk["capacity"], field=f"{path}.capacity")
        elif disk["type"] == "DiskOrCreate":  # virtbus cannot size a disk it has to create
            raise _fail(f"{path}.capacity", "is required when type is DiskOrCreate")

    def disk(self, disk: dict[str, Any], path: str) -> None:
        types = [key for key in DISK_TYPES if key in disk]
        if len(types) > 1:
            raise _fail(path, f"has {' and '.join(types)}; a disk is one of disk, cdrom, lun")
        kind = types[0] if types else "disk"
        bus = self.section(disk.get(kind), f"{path}.{kind}", fields=_DISK_TARGET).get("bus")
        if bus is not None and bus not in BUSES:
            raise _fail(f"{path}.{kind}.bus", f"{bus!r} is not one of {', '.join(BUSES)}")
        if kind == "cdrom" and bus == "virtio":  # QEMU has no virtio CD-ROM; KubeVirt agrees
            raise _fail(f"{path}.cdrom.bus", "a cdrom cannot use the virtio bus; use sata or scsi")
