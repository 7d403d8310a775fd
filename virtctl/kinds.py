"""The kinds virtbus serves, by every name kubectl accepts for them, and `TYPE/NAME` arguments.

`get`, `describe`, `wait`, `delete` and `patch` take a kind as KubeVirt users type it (`vm`, `vmis`,
`virtualmachineinstancereplicaset`, `pvc`...) or in kubectl's `TYPE/NAME` form (`get vm/x`); one
table here answers what it is, how kubectl names it (`-o name`: `virtualmachine.kubevirt.io/x`,
"not found": `virtualmachines.kubevirt.io "x" not found`) and which manifest `kind:` it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.errors import ValidationError


@dataclass(frozen=True)
class Kind:
    key: str  # the canonical short plural: vms, vmis, vmirs, vmims, vmsnapshots, vmrestores...
    kind: str  # the manifest's `kind:`
    group: str  # the API group; "" for Kubernetes' core group
    aliases: tuple[str, ...]
    namespaced: bool = True

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def resource(self) -> str:
        """`virtualmachines.kubevirt.io`: how kubectl names the kind in "not found"."""
        plural = _plural(self.singular)
        return f"{plural}.{self.group}" if self.group else plural

    def object_name(self, name: str) -> str:
        """`-o name`'s line: `virtualmachine.kubevirt.io/x`, `persistentvolumeclaim/x`."""
        return f"{self.singular}.{self.group}/{name}" if self.group else f"{self.singular}/{name}"

    def not_found(self, name: str) -> str:
        return f'{self.resource} "{name}" not found'


def _plural(singular: str) -> str:
    if singular.endswith("s"):
        return f"{singular}es"
    return f"{singular[:-1]}ies" if singular.endswith("y") else f"{singular}s"


def _kind(key: str, kind: str, group: str, *short: str, namespaced: bool = True) -> Kind:
    singular = kind.lower()
    return Kind(key, kind, group, (*short, singular, _plural(singular)), namespaced)


VM = _kind("vms", "VirtualMachine", "kubevirt.io", "vm", "vms")
VMI = _kind("vmis", "VirtualMachineInstance", "kubevirt.io", "vmi", "vmis")
VMIRS = _kind("vmirs", "VirtualMachineInstanceReplicaSet", "kubevirt.io", "vmirs", "vmirss")
VMIM = _kind("vmims", "VirtualMachineInstanceMigration", "kubevirt.io", "vmim", "vmims",
             "migration", "migrations")  # fmt: skip
SNAPSHOT = _kind("vmsnapshots", "VirtualMachineSnapshot", "snapshot.kubevirt.io", "vmsnapshot",
                 "vmsnapshots", "vmsnap", "vmsnaps", "snapshot", "snapshots")  # fmt: skip
RESTORE = _kind("vmrestores", "VirtualMachineRestore", "snapshot.kubevirt.io", "vmrestore",
                "vmrestores", "restore", "restores")  # fmt: skip
PVC = _kind("pvc", "PersistentVolumeClaim", "", "pvc", "pvcs")
DV = _kind("dv", "DataVolume", "cdi.kubevirt.io", "dv", "dvs")
_IT = "instancetype.kubevirt.io"
INSTANCETYPE = _kind("vminstancetypes", "VirtualMachineInstancetype", _IT, "vminstancetype",
                     "vminstancetypes", "vmf", "vmfs")  # fmt: skip
CLUSTER_INSTANCETYPE = _kind("vmclusterinstancetypes", "VirtualMachineClusterInstancetype", _IT,
                             "vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs",
                             namespaced=False)  # fmt: skip
PREFERENCE = _kind("vmprefs", "VirtualMachinePreference", _IT, "vmpref", "vmprefs", "vmp", "vmps")
CLUSTER_PREFERENCE = _kind("vmclusterprefs", "VirtualMachineClusterPreference", _IT,
                           "vmclusterpref", "vmclusterprefs", "vmcp", "vmcps",
                           namespaced=False)  # fmt: skip
INSTANCETYPES = (INSTANCETYPE, CLUSTER_INSTANCETYPE, PREFERENCE, CLUSTER_PREFERENCE)
VMPOOL = _kind("vmpools", "VirtualMachinePool", "pool.kubevirt.io", "vmpool", "vmpools")
KUBEVIRT = _kind("kubevirt", "KubeVirt", "kubevirt.io", "kv", "kvs")
NODE = Kind("nodes", "Node", "", ("node", "nodes", "no"), namespaced=False)
SERVICE = _kind("svc", "Service", "", "svc", "svcs")
# the instance types and preferences VMs captured (read only: KubeVirt's VM controller makes them)
DATASOURCE = _kind("datasources", "DataSource", "cdi.kubevirt.io", "das")
REVISION = _kind("controllerrevisions", "ControllerRevision", "apps")
MIGRATION_POLICY = _kind("migrationpolicies", "MigrationPolicy", "migrations.kubevirt.io",
                         namespaced=False)  # fmt: skip
KINDS = (VM, VMI, VMIRS, VMIM, SNAPSHOT, RESTORE, PVC, DV, *INSTANCETYPES, VMPOOL, KUBEVIRT, NODE,
         SERVICE, REVISION, MIGRATION_POLICY, DATASOURCE)  # fmt: skip
_BY_ALIAS = {alias: k for k in KINDS for alias in k.aliases}
_BY_MANIFEST = {k.kind: k for k in KINDS}
_SEPARATE = (
    "there is no need to specify a resource type as a separate argument when passing "
    "arguments in resource/name form (e.g. 'virtbus get resource/<resource_name>' "
    "instead of 'virtbus get resource resource/<resource_name>')"
)
SUPPORTED = (
    "vm, vmi, vmirs, vmim, vmsnapshot, vmrestore, pvc, dv, vmf, vmcf, vmpref, vmcp, vmpool, "
    "kubevirt, node, svc, controllerrevision, migrationpolicy, datasource"
)


def lookup(word: str) -> Kind:
    """The kind `word` names (any of kubectl's spellings, case-insensitive, `kind.group` too)."""
    low = word.lower()
    found = _BY_ALIAS.get(low)
    if found is None and "." in low:  # `virtualmachines.kubevirt.io`, `vm.kubevirt.io`
        head, _, group = low.partition(".")
        found = _BY_ALIAS.get(head)
        found = found if found is not None and found.group == group else None
    if found is None:
        raise ValidationError(f'the server doesn\'t have a resource type "{word}"', field="kind")
    return found


def of_manifest(kind: str) -> Kind:
    """The kind of a manifest's `kind:` (VirtualMachine, PersistentVolumeClaim...)."""
    found = _BY_MANIFEST.get(kind)
    if found is None:
        raise ValidationError(f"kind: {kind!r} is not a kind virtbus serves", field="kind")
    return found


def split(what: str, name: str | None) -> tuple[Kind, str | None]:
    """`vm x` or `vm/x` (kubectl's TYPE/NAME) as the kind and the name (None: all of them)."""
    if "/" in what:
        if name is not None:
            raise ValidationError(_SEPARATE, field="name")
        word, _, named = what.partition("/")
        if not named:
            raise ValidationError(f"{what!r}: a name must follow the '/'", field="name")
        return lookup(word), named
    if name is not None and "/" in name:
        raise ValidationError(_SEPARATE, field="name")
    return lookup(what), name
