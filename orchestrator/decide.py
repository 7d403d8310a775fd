"""virt-api's judgement: a command against the folded state becomes decision events or a rejection.

Pure: `decide(state, command)` returns events, or raises `ValidationError` whose message and
`field` become the `CommandRejected` event. Rejection texts follow KubeVirt's where it has one
("VM is already running", "VMI is not paused"...), so users find the words they already know.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from events import commands as c
from events import model as m
from events.errors import ValidationError, stale
from events.manifest import API_VERSION, POOL_API_VERSION, run_strategy_of, to_commands
from events.names import check_name
from events.replicasets import ReplicaSetState
from events.state import RUNNING, STOPPING, TERMINATING, VMState
from orchestrator.hotplug import add_volume, remove_volume
from orchestrator.migrations import admit_vmim, decide_cancel, decide_migrate
from orchestrator.rename import decide_rename
from orchestrator.resize import only_live_changes
from orchestrator.scheduler import NodeView
from orchestrator.snapshots import decide_delete_snapshot, decide_restore, decide_snapshot

_AUTOSTART = ("Always", "RerunOnFailure", "Once")
VMI_SOURCE = "VirtualMachineInstance"  # an ApplyVM's source_kind for a VMI applied on its own


def _reject(reason: str, *, field: str = "") -> ValidationError:
    return ValidationError(reason, field=field)


def _not_found(cmd: c.Command) -> ValidationError:
    return _reject(
        f'virtualmachine.kubevirt.io "{cmd.name}" not found in namespace "{cmd.namespace}"',
        field="name",
    )


def validate_apply(cmd: c.ApplyVM) -> list[str]:
    """Run the manifest checks on the spec (a bare NATS client skipped the CLI's), or raise."""
    doc = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": cmd.name, "namespace": cmd.namespace, "labels": cmd.labels},
        "spec": cmd.spec,
    }
    _, warnings = to_commands(doc)
    return warnings


def decide(s: VMState, cmd: c.Command, *, nodes: Sequence[NodeView] | None = None) -> list[m.Event]:
    """The events `cmd` stands for, given the VM as the log knows it (`s`) and, when known, the
    cluster's nodes (a migration's target is checked against them)."""
    match cmd:
        case c.ApplyVM():
            return _apply(s, cmd)
        case c.UndeleteVM():
            if s.deleted and s.renamed_to:
                raise _reject(f'VM "{cmd.name}" was renamed to "{s.renamed_to}"; it lives on '
                              "under that name", field="name")  # fmt: skip
            if not s.deleted:
                raise _reject(f'VM "{cmd.name}" is not deleted', field="name")
            return [m.VMUndeleted()]
    if isinstance(cmd, c.MigrateVM) and cmd.vmim:
        admit_vmim(s, cmd)  # about the VMI it names, not a VM
    if not s.exists:
        raise _not_found(cmd)
    if s.source_kind == VMI_SOURCE and isinstance(cmd, c.StartVM | c.StopVM | c.RestartVM):
        # No VirtualMachine stands behind a VMI applied on its own: deleting it stops it.
        why = f'"{cmd.name}" is a VirtualMachineInstance: delete it to stop it'
        raise _reject(f"{_not_found(cmd).message}; {why} (virtbus delete vmi {cmd.name})",
                      field="name")  # fmt: skip
    match cmd:
        case c.StartVM():
            if s.running:
                raise _reject("VM is already running")
            if s.restoring and s.restore is not None:
                raise _reject(f'Cannot start VM until restore "{s.restore.name}" completes')
            if s.status == TERMINATING:
                raise _reject("VM is being deleted")
            return [m.VMStartRequested(paused=cmd.paused)]
        case c.StopVM():
            # A crash-looping or unschedulable Always VM is not running, but stop must halt it.
            if not s.running and s.run_strategy not in ("Always", "RerunOnFailure"):
                raise _reject("VM is not running")
            if s.status == STOPPING and not cmd.force:
                raise _reject("VM is already stopping; use --force to stop it at once")
            return [
                m.VMStopRequested(grace_period_seconds=cmd.grace_period_seconds, force=cmd.force)
            ]
        case c.RestartVM():
            if not s.running:
                raise _reject("VM is not running")
            return [m.VMRestartRequested(grace_period_seconds=cmd.grace_period_seconds,
                                         force=cmd.force)]  # fmt: skip
        case c.PauseVM():
            if s.phase != RUNNING:
                raise _reject("VMI is not running")
            if s.paused or s.want_paused:
                raise _reject("VMI is already paused")
            return [m.VMPauseRequested()]
        case c.SoftRebootVM():
            return _soft_reboot(s)
        case c.UnpauseVM():
            if not (s.paused or s.want_paused):
                raise _reject("VMI is not paused")
            return [m.VMUnpauseRequested()]
        case c.ResetVM():
            return [m.VMResetRequested(vmi_uid=_resettable(s, cmd))]
        case c.MemoryDumpVM():
            if not cmd.claim and s.memory_dump is None:
                raise _reject("Memory dump requires claim name to be set", field="claim")
            associated = s.memory_dump.claim if s.memory_dump is not None else ""
            claim = check_name(cmd.claim or associated, field="claim")
            dump = msgspec.structs.replace(cmd, claim=claim)
            return [m.MemoryDumpRequested(claim=claim, vmi_uid=_dumpable(s, dump))]
        case c.RemoveMemoryDump():
            if s.memory_dump is None:
                raise _reject(f"can't remove memory dump association for vm {cmd.name}, no "
                              "association found")  # fmt: skip
            return [m.MemoryDumpRemoved(claim=s.memory_dump.claim)]
        case c.DeleteVM():
            if s.status == TERMINATING:
                raise _reject("VM is already being deleted")
            disks = kept_disks(s.spec)
            return [m.VMDeleteRequested()] + ([] if s.running else [m.VMDeleted(disks=disks)])
        case c.MigrateVM():
            return decide_migrate(s, cmd, nodes=nodes)
        case c.CancelMigration():
            return decide_cancel(s, cmd)
        case c.AddVolume():
            return add_volume(s, cmd)
        case c.RemoveVolume():
            return remove_volume(s, cmd)
        case c.SnapshotVM():
            return decide_snapshot(s, cmd)
        case c.RenameVM():
            return decide_rename(s, cmd)
        case c.RestoreVM():
            return decide_restore(s, cmd)
        case c.DeleteSnapshot():
            return decide_delete_snapshot(s, cmd)
    raise _reject(f"{type(cmd).__name__} is not available yet in virtbus", field="kind")


def _soft_reboot(s: VMState) -> list[m.Event]:
    """KubeVirt's checks (virt-api's softreboot subresource), in its words: without a connected
    agent the node presses the ACPI button, unless the spec turned ACPI off."""
    if s.phase != RUNNING:
        raise _reject("VM is not running")
    if s.paused or s.want_paused:
        raise _reject("VMI is paused")
    domain = ((s.spec.get("template") or {}).get("spec") or {}).get("domain") or {}
    acpi = (domain.get("features") or {}).get("acpi") or {}
    if not s.agent_connected and acpi.get("enabled") is False:
        raise _reject("VMI neither have the agent connected nor the ACPI feature enabled")
    return [m.VMSoftRebootRequested()]


def _resettable(s: VMState, cmd: c.ResetVM) -> str:
    """The instance a reset is for, or KubeVirt's refusal (no VMI: not found; one on its way up:
    not running)."""
    if not s.running:
        raise _reject(f'virtualmachineinstance.kubevirt.io "{cmd.name}" not found', field="name")
    if s.phase != RUNNING:
        raise _reject(f"Failed to reset non-running VMI with phase {s.phase}")
    return s.vmi_uid


def _dumpable(s: VMState, cmd: c.MemoryDumpVM) -> str:
    """The instance whose memory goes into the claim, or KubeVirt's refusal."""
    dump = s.memory_dump
    if dump is not None and dump.claim != cmd.claim:
        raise _reject(f"can't request memory dump for pvc [{cmd.claim}] while pvc [{dump.claim}] "
                      "is still associated as the memory dump pvc", field="claim")  # fmt: skip
    if dump is not None and dump.phase == "InProgress":
        raise _reject(f"memory dump request for pvc [{cmd.claim}] already in progress")
    if s.phase != RUNNING:
        raise _reject(f"VirtualMachine {cmd.name} is not running; its memory cannot be dumped")
    return s.vmi_uid


# Replica sets and pools: one decision, each with its kind's names and events.
_RS_KINDS: dict[str, tuple[str, str, str, tuple[type[m.Event], ...]]] = {
    "rs": (API_VERSION, "VirtualMachineInstanceReplicaSet", "kubevirt.io",
           (m.ReplicaSetCreated, m.ReplicaSetSpecChanged, m.ReplicaSetScaled,
            m.ReplicaSetDeleted)),
    "vmpool": (POOL_API_VERSION, "VirtualMachinePool", "pool.kubevirt.io",
               (m.VMPoolCreated, m.VMPoolSpecChanged, m.VMPoolScaled, m.VMPoolDeleted)),
}  # fmt: skip


def decide_rs(rs: ReplicaSetState, cmd: c.Command) -> list[m.Event]:
    """The events a replica-set (or pool) command stands for."""
    api, kind, group, (created, changed, scaled, deleted) = _RS_KINDS[cmd.aggregate]
    match cmd:
        case c.ApplyReplicaSet():
            doc = {
                "apiVersion": api, "kind": kind,
                "metadata": {"name": cmd.name, "namespace": cmd.namespace, "labels": cmd.labels},
                "spec": cmd.spec,
            }  # fmt: skip
            to_commands(doc)
            _check_write(rs.exists, rs.version, cmd, resource=f"{kind.lower()}s", group=group)
            # An explicit null is the default, as the manifest check reads it.
            replicas = 1 if cmd.spec.get("replicas") is None else int(cmd.spec["replicas"])
            if not rs.exists:
                return [created(spec=cmd.spec, replicas=replicas, labels=cmd.labels)]
            if (cmd.spec, cmd.labels) == (rs.spec, rs.labels):
                return []
            return [changed(spec=cmd.spec, replicas=replicas, labels=cmd.labels)]
    if not rs.exists:
        raise _reject(f'{kind.lower()}.{group} "{cmd.name}" not found', field="name")
    match cmd:
        case c.ScaleReplicaSet():
            return [] if cmd.replicas == rs.replicas else [scaled(replicas=cmd.replicas)]
        case c.DeleteReplicaSet():
            return [deleted()]
    raise _reject(f"{type(cmd).__name__} does not apply to a {kind}", field="kind")


_RESOURCES = {"VirtualMachine": "virtualmachines", "VirtualMachineInstance":
              "virtualmachineinstances"}  # fmt: skip


def _check_write(
    exists: bool,
    version: int,
    cmd: c.ApplyVM | c.ApplyReplicaSet,
    *,
    resource: str,
    group: str = "kubevirt.io",
) -> None:
    """`kubectl create` of what exists, or a patch made on a version that is no longer the
    latest, are refused with the API server's words (the CLI retries a conflicting patch)."""
    if cmd.create_only and exists:
        raise _reject(f'{resource}.{group} "{cmd.name}" already exists',
                      field="metadata.name")  # fmt: skip
    if cmd.expected_version and cmd.expected_version != version:
        raise _reject(stale(f"{resource}.{group}", cmd.name), field="metadata.resourceVersion")


def _apply(s: VMState, cmd: c.ApplyVM) -> list[m.Event]:
    validate_apply(cmd)
    strategy = run_strategy_of(cmd.spec)
    resource = _RESOURCES.get(cmd.source_kind, "virtualmachines")
    _check_write(s.exists, s.version, cmd, resource=resource)
    if s.exists and s.source_kind != cmd.source_kind:
        # One name, one instance: a VM and a VMI nobody owns cannot share it (KubeVirt's VM
        # would adopt or clash with the VMI of its name).
        mine, theirs = cmd.source_kind, s.source_kind
        raise _reject(f'a {theirs} named "{cmd.name}" exists; a {mine} cannot take its name '
                      "until it is deleted", field="metadata.name")  # fmt: skip
    if not s.exists:
        return [
            m.VMCreated(
                spec=cmd.spec, labels=cmd.labels, annotations=cmd.annotations,
                run_strategy=strategy, source_kind=cmd.source_kind, start=strategy in _AUTOSTART,
            )
        ]  # fmt: skip
    if s.status == TERMINATING:
        raise _reject("VM is being deleted", field="metadata.name")
    if (cmd.spec, cmd.labels, cmd.annotations) == (s.spec, s.labels, s.annotations):
        return []  # re-applying what is there changes nothing, like kubectl's "unchanged"
    if s.source_kind == "VirtualMachineInstance" and _vmi_spec(s.spec) != _vmi_spec(cmd.spec):
        # A VMI's spec is what runs: virt-api refuses changing it (its labels may change).
        raise _reject("update of VMI object is restricted", field="spec")
    changed = changed_paths(s.spec, cmd.spec)
    template_changed = any(p.startswith("template") for p in changed)
    if s.size is not None and only_live_changes(s.spec, cmd.spec):
        # CPU sockets and guest memory: the controller plugs them live or says why it cannot.
        template_changed = False
    events: list[m.Event] = [
        m.VMSpecChanged(
            spec=cmd.spec, changed=changed, run_strategy=strategy,
            labels=None if cmd.labels == s.labels else cmd.labels,
            annotations=None if cmd.annotations == s.annotations else cmd.annotations,
            restart_required=template_changed and s.running,
        )
    ]  # fmt: skip
    if strategy in ("Always", "RerunOnFailure") and not s.running:
        events.append(m.VMStartRequested())
    elif strategy == "Halted" and s.running and s.status != STOPPING:
        events.append(m.VMStopRequested())
    return events


def _vmi_spec(spec: dict[str, Any]) -> Any:
    """A lone VMI's own spec (its labels ride in the template's metadata)."""
    template = spec.get("template")
    return template.get("spec") if isinstance(template, dict) else None


def changed_paths(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths that differ, down to the template's spec sections."""
    if isinstance(old, dict) and isinstance(new, dict) and path.count(".") < 3:
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if old.get(key) != new.get(key):
                out.extend(changed_paths(old.get(key), new.get(key), sub))
        return out
    return [path] if old != new else []


def kept_disks(spec: dict[str, Any]) -> list[str]:
    """Volumes a deleted VM leaves behind (KubeVirt keeps PVCs and host disks)."""
    volumes = ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
    kept = []
    for v in volumes:
        if "persistentVolumeClaim" in v:
            kept.append(f"pvc/{v['persistentVolumeClaim'].get('claimName', '')}")
        elif "hostDisk" in v:
            kept.append(f"hostDisk/{v['hostDisk'].get('path', '')}")
        elif "dataVolume" in v:
            kept.append(f"dataVolume/{v['dataVolume'].get('name', '')}")
    return kept
