"""The KubeVirt object (`kind: KubeVirt`, kubevirt.io/v1): the cluster's configuration as an
aggregate with a history, its fold, and what the orchestrator reads off it, pure.

KubeVirt keeps its configuration in one custom resource that `kubectl edit kubevirt` changes in
place; virtbus records each change as a `KubeVirtApplied` event, so who changed the configuration
and when is in the log like every other decision. Until one is applied, the cluster runs by
`DEFAULT_SPEC`: the seed's (feature gates DataVolumes, LiveMigration and HostDisk, software
emulation allowed), which is how virtbus behaved before the object existed. Feature gates follow
the current KubeVirt release: GA gates are always on (listing one warns, with KubeVirt's words),
Beta gates are on unless disabled, Alpha gates are off unless listed.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import msgspec

from events import commands as c
from events import work as w
from events.errors import ValidationError
from events.instancetypes import InstancetypeState, apply_instancetype
from events.quantity import parse_quantity

KIND: Final = "KubeVirt"
DEFAULT_NAMESPACE: Final = "kubevirt"
DEFAULT_NAME: Final = "kubevirt"
SEED_GATES: Final = ("DataVolumes", "LiveMigration", "HostDisk")
DEFAULT_SPEC: Final[dict[str, Any]] = {"configuration": {"developerConfiguration": {
    "featureGates": list(SEED_GATES), "useEmulation": True}}}  # fmt: skip
EVICTION_STRATEGIES: Final = ("None", "LiveMigrate", "LiveMigrateIfPossible", "External")
ALPHA, BETA, GA, GONE = "Alpha", "Beta", "General Availability", "removed"
# The gates whose features virtbus has, with their state in KubeVirt today (pkg/virt-config/
# featuregate): HostDisk is still Alpha, Snapshot Beta; the others graduated (GA: always on).
GATES: Final = {
    "HostDisk": ALPHA, "Snapshot": BETA, "LiveMigration": GA, "ExpandDisks": GA,
    "HotplugNICs": GA, "VMExport": GA, "CommonInstancetypesDeploymentGate": GA,
    "InstancetypeReferencePolicy": GA, "VMLiveUpdateFeatures": GA, "PanicDevices": GA,
    "DataVolumes": GONE,
    # Either opens `migrations.maxDowntimeMs` to change (virtbus has neither's other feature).
    "MigrationStallDetection": ALPHA, "MigrationDowntimeTuning": ALPHA,
}  # fmt: skip
_DEPRECATED: Final = (
    'feature gate {} is deprecated (feature state is "{}"), therefore it can be safely removed '
    "and is redundant. For more info, please look at: "
    "https://github.com/kubevirt/kubevirt/blob/main/docs/deprecation.md"
)
# KubeVirt's `spec.configuration.migrations` keys -> MigrationPolicy fields.
POLICY_KEYS: Final = {
    "bandwidthPerMigration": "bandwidth_bytes", "completionTimeoutPerGiB":
    "completion_timeout_per_gib", "allowAutoConverge": "allow_auto_converge",
    "allowPostCopy": "allow_post_copy", "maxDowntimeMs": "max_downtime_ms",
    "parallelMigrationsPerCluster": "parallel_per_cluster",
    "parallelOutboundMigrationsPerNode": "parallel_outbound_per_node",
}  # fmt: skip
_MIGRATION_IGNORED: Final = frozenset({
    "progressTimeout", "nodeDrainTaintKey", "unsafeMigrationOverride", "network", "disableTLS",
    "matchSELinuxLevelOnMigration", "allowWorkloadDisruption", "utilityVolumesTimeout",
})  # fmt: skip


# An object applied whole, like an instance type: the same state and fold serve it.
KubeVirtState = InstancetypeState
apply_kubevirt = apply_instancetype


# What KubeVirt's API server fills in of a KubeVirt object's spec (the operator's object as
# stored): shown so, patchable so (the user guide adds to workloadUpdateStrategy), and not
# warned about while they keep these values.
SPEC_DEFAULTS: Final[dict[str, Any]] = {
    "certificateRotateStrategy": {}, "customizeComponents": {}, "imagePullPolicy": "IfNotPresent",
    "workloadUpdateStrategy": {},
}  # fmt: skip


def shown_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as `get kubevirt` shows it: KubeVirt's defaults where it names nothing else."""
    return {**copy.deepcopy(SPEC_DEFAULTS), **spec}


def default_state() -> KubeVirtState:
    """The object as `get kubevirt` shows it before anyone applied one: the seed's."""
    return KubeVirtState(namespace=DEFAULT_NAMESPACE, name=DEFAULT_NAME,
                         spec=copy.deepcopy(DEFAULT_SPEC))  # fmt: skip


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """What the orchestrator runs by, read off the KubeVirt object's `spec.configuration`."""

    gates: frozenset[str] = frozenset(SEED_GATES)
    disabled: frozenset[str] = frozenset()
    use_emulation: bool = True
    eviction_strategy: str = "None"  # KubeVirt's cluster default
    migrations: w.MigrationPolicy = w.MigrationPolicy()
    live_update: bool = True  # vmRolloutStrategy: LiveUpdate (KubeVirt's default) or Stage
    max_cpu_sockets: int = 0  # liveUpdateConfiguration.maxCpuSockets (0: by the ratio)
    max_guest: int = 0  # liveUpdateConfiguration.maxGuest, bytes (0: by the ratio)
    max_hotplug_ratio: int = 4  # liveUpdateConfiguration.maxHotplugRatio, KubeVirt's default
    reference_policy: str = "reference"  # instancetype.referencePolicy: or expand, expandAll

    def enabled(self, gate: str) -> bool:
        """KubeVirt's precedence: GA (always on) > listed > disabled > Beta (on) > off."""
        state = GATES.get(gate)
        if state == GA:
            return True
        if gate in self.gates:
            return True
        return gate not in self.disabled and state == BETA


def config_of(spec: dict[str, Any] | None) -> Config:
    """The configuration a KubeVirt spec stands for (None: no object applied, the default)."""
    conf = _map((spec if spec is not None else DEFAULT_SPEC).get("configuration"))
    dev = _map(conf.get("developerConfiguration"))
    migrations = {k: v for k, v in _map(conf.get("migrations")).items() if k in POLICY_KEYS}
    live = _map(conf.get("liveUpdateConfiguration"))
    max_guest = live.get("maxGuest")
    return Config(
        live_update=conf.get("vmRolloutStrategy") in (None, "LiveUpdate"),
        max_cpu_sockets=int(live.get("maxCpuSockets") or 0),
        max_guest=parse_quantity(max_guest, field="maxGuest") if max_guest else 0,
        max_hotplug_ratio=int(live.get("maxHotplugRatio") or 4),
        gates=frozenset(dev.get("featureGates") or ()),
        disabled=frozenset(dev.get("disabledFeatureGates") or ()),
        use_emulation=bool(dev.get("useEmulation", False)),
        eviction_strategy=str(conf.get("evictionStrategy") or "None"),
        migrations=policy_from_config(migrations),
        reference_policy=str(_map(conf.get("instancetype")).get("referencePolicy") or "reference"),
    )  # fmt: skip


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def policy_from_config(doc: Any) -> w.MigrationPolicy:
    """A policy from KubeVirt's migration configuration (`migrations:` or its contents); what is
    left out keeps KubeVirt's default."""
    doc = doc.get("migrations", doc) if isinstance(doc, dict) else doc
    if not isinstance(doc, dict):
        raise ValidationError("migrations: expected a mapping", field="migrations")
    values: dict[str, Any] = {}
    for key, given in doc.items():
        field = f"migrations.{key}"
        if (name := POLICY_KEYS.get(key)) is None:
            raise ValidationError(f"{field}: unknown; use one of {', '.join(POLICY_KEYS)}",
                                  field=field)  # fmt: skip
        value = parse_quantity(given, field=field) if name == "bandwidth_bytes" else given
        ok = isinstance(value, bool) if name.startswith("allow") else (
            isinstance(value, int) and not isinstance(value, bool) and value > 0)  # fmt: skip
        if not ok:
            want = "true or false" if name.startswith("allow") else "a positive integer"
            raise ValidationError(f"{field}: {value!r} is not {want}", field=field)
        values[name] = value
    return w.MigrationPolicy(**values)


def policy_spec(policy: w.MigrationPolicy) -> dict[str, Any]:
    """`spec.configuration.migrations` for a policy: its settings that differ from KubeVirt's."""
    default, names = w.MigrationPolicy(), {v: k for k, v in POLICY_KEYS.items()}
    return {names[f]: getattr(policy, f) for f in policy.__struct_fields__
            if getattr(policy, f) != getattr(default, f)}  # fmt: skip


# --- the manifest --------------------------------------------------------------------------------

REFERENCE_POLICIES: Final = ("reference", "expand", "expandAll")
_ACTED: Final = {
    "spec": frozenset({"configuration"}),
    "spec.configuration": frozenset({"developerConfiguration", "migrations", "evictionStrategy",
                                     "vmRolloutStrategy", "liveUpdateConfiguration",
                                     "instancetype"}),
    "spec.configuration.developerConfiguration": frozenset(
        {"featureGates", "disabledFeatureGates", "useEmulation"}),
}  # fmt: skip


def read_spec(spec: dict[str, Any]) -> list[str]:
    """Check a KubeVirt object's spec as KubeVirt's admission does; the warnings it earns: the
    settings virtbus records but does not act on, and the gates that are no gates any more."""
    warns: list[str] = []
    sections: dict[str, dict[str, Any]] = {}
    found: Any = spec
    for path, acted in _ACTED.items():  # each section is a key of the one before it
        if found is not None and not isinstance(found, dict):
            raise ValidationError(f"{path}: expected a mapping", field=path)
        sections[path] = found = found or {}
        warns += [f"warning: {path}.{key}: recorded; virtbus does not act on it"
                  for key in found if key not in acted
                  and (path != "spec" or found[key] != SPEC_DEFAULTS.get(key, ...))]  # fmt: skip
        found = found.get({"spec": "configuration", "spec.configuration":
                           "developerConfiguration"}.get(path, ""))  # fmt: skip
    dev = sections["spec.configuration.developerConfiguration"]
    at = "spec.configuration.developerConfiguration"
    lists = {key: _gate_list(dev.get(key), f"{at}.{key}")
             for key in ("featureGates", "disabledFeatureGates")}  # fmt: skip
    for gate in lists["featureGates"]:
        if gate in lists["disabledFeatureGates"]:
            both = f'feature gate "{gate}" exists on both "FeatureGates" and "DisabledFeatureGates"'
            raise ValidationError(both, field=f"{at}.featureGates")
        state = GATES.get(gate)
        if state == GA:
            warns.append(f"warning: {_DEPRECATED.format(gate, GA)}")
        elif state == GONE:
            warns.append(f"warning: {at}.featureGates: {gate} is no feature gate of KubeVirt "
                         "any more (the feature is always on); ignored")  # fmt: skip
        elif state is None:
            warns.append(f"warning: {at}.featureGates: {gate}: virtbus has no feature behind "
                         "this gate; recorded only")  # fmt: skip
    if not isinstance(dev.get("useEmulation", False), bool):
        raise ValidationError(f"{at}.useEmulation: {dev['useEmulation']!r} is not true or false",
                              field=f"{at}.useEmulation")  # fmt: skip
    strategy = sections["spec.configuration"].get("evictionStrategy")
    if strategy is not None and strategy not in EVICTION_STRATEGIES:
        field = "spec.configuration.evictionStrategy"
        raise ValidationError(f"{field}: {strategy!r} is not one of "
                              f"{', '.join(EVICTION_STRATEGIES)}", field=field)  # fmt: skip
    _read_live_update(sections["spec.configuration"])
    _read_reference_policy(sections["spec.configuration"])
    migrations = sections["spec.configuration"].get("migrations")
    if migrations is not None:
        if not isinstance(migrations, dict):
            raise ValidationError("spec.configuration.migrations: expected a mapping",
                                  field="spec.configuration.migrations")  # fmt: skip
        warns += [f"warning: spec.configuration.migrations.{key}: recorded; virtbus does not "
                  "act on it" for key in migrations if key in _MIGRATION_IGNORED]  # fmt: skip
        try:
            policy_from_config({k: v for k, v in migrations.items() if k not in _MIGRATION_IGNORED})
        except ValidationError as err:
            raise ValidationError(f"spec.configuration.{err.message}",
                                  field=f"spec.configuration.{err.field}") from None  # fmt: skip
    return warns


def _read_reference_policy(conf: dict[str, Any]) -> None:
    """`instancetype.referencePolicy`: reference (KubeVirt's default), expand or expandAll."""
    at = "spec.configuration.instancetype"
    section = conf.get("instancetype")
    if section is not None and not isinstance(section, dict):
        raise ValidationError(f"{at}: expected a mapping", field=at)
    policy = (section or {}).get("referencePolicy")
    if policy is not None and policy not in REFERENCE_POLICIES:
        raise ValidationError(f'{at}.referencePolicy: Unsupported value: "{policy}": supported '
                              'values: "reference", "expand", "expandAll"',
                              field=f"{at}.referencePolicy")  # fmt: skip


def _read_live_update(conf: dict[str, Any]) -> None:
    """`vmRolloutStrategy` and `liveUpdateConfiguration`, checked as KubeVirt's CRD schema does."""
    at = "spec.configuration.vmRolloutStrategy"
    if (strategy := conf.get("vmRolloutStrategy")) not in (None, "Stage", "LiveUpdate"):
        raise ValidationError(f'{at}: Unsupported value: {strategy!r}: supported values: '
                              '"Stage", "LiveUpdate"', field=at)  # fmt: skip
    at = "spec.configuration.liveUpdateConfiguration"
    live = conf.get("liveUpdateConfiguration")
    if live is not None and not isinstance(live, dict):
        raise ValidationError(f"{at}: expected a mapping", field=at)
    for key, given in (live or {}).items():
        field = f"{at}.{key}"
        if key == "maxGuest":
            parse_quantity(given, field=field)
        elif key not in ("maxCpuSockets", "maxHotplugRatio"):
            raise ValidationError(f"{field}: unknown; use maxCpuSockets, maxGuest or "
                                  "maxHotplugRatio", field=field)  # fmt: skip
        elif not isinstance(given, int) or isinstance(given, bool) or given < 1:
            raise ValidationError(f"{field}: {given!r} is not a positive integer", field=field)


def _gate_list(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise ValidationError(f"{path}: expected a list of feature gate names", field=path)
    return list(value)


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What an apply changes, for the history: gates turned on and off, settings set."""
    old, new = config_of(before or None), config_of(after)
    out = [f"featureGates +{g}" for g in sorted(new.gates - old.gates)]
    out += [f"featureGates -{g}" for g in sorted(old.gates - new.gates)]
    out += [f"disabledFeatureGates +{g}" for g in sorted(new.disabled - old.disabled)]
    out += [f"disabledFeatureGates -{g}" for g in sorted(old.disabled - new.disabled)]
    for label, a, b in (("useEmulation", old.use_emulation, new.use_emulation),
                        ("evictionStrategy", old.eviction_strategy, new.eviction_strategy),
                        ("vmRolloutStrategy", _rollout(old), _rollout(new)),
                        ("migrations", old.migrations, new.migrations)):  # fmt: skip
        if a != b:
            shown = policy_spec(b) if isinstance(b, w.MigrationPolicy) else b
            out.append(f"{label} {shown}")
    return out


def _rollout(config: Config) -> str:
    return "LiveUpdate" if config.live_update else "Stage"


# --- gates on commands ---------------------------------------------------------------------------


def gated_paths(spec: dict[str, Any]) -> dict[str, str]:
    """The Alpha/Beta-gated features a VM spec uses: path -> gate (only hostDisk, today)."""
    vmi = _map(_map(spec.get("template")).get("spec")) if "template" in spec else spec
    volumes = vmi.get("volumes")
    volumes = volumes if isinstance(volumes, list) else []
    prefix = "spec.template.spec" if "template" in spec else "spec"
    return {f"{prefix}.volumes[{i}].hostDisk": "HostDisk"
            for i, v in enumerate(volumes) if isinstance(v, dict) and "hostDisk" in v}  # fmt: skip


def refuse_downtime_change(before: dict[str, Any], after: dict[str, Any]) -> None:
    """KubeVirt's admission of its object: `migrations.maxDowntimeMs` changes only with the
    MigrationStallDetection or MigrationDowntimeTuning gate listed (virt-operator's
    validateMigrationConfiguration)."""

    def downtime(spec: dict[str, Any]) -> Any:
        return _map(_map(_map(spec).get("configuration")).get("migrations")).get("maxDowntimeMs")

    gates = config_of(after).gates
    if downtime(after) is not None and downtime(after) != downtime(before) and not gates & {
            "MigrationStallDetection", "MigrationDowntimeTuning"}:  # fmt: skip
        raise ValidationError("maxDowntimeMs cannot be modified without enabling the "
                              "MigrationStallDetection or MigrationDowntimeTuning feature gate",
                              field="spec.configuration.migrations.maxDowntimeMs")  # fmt: skip


def refuse_gated(config: Config, cmd: c.Command, spec: dict[str, Any] | None) -> None:
    """Raise KubeVirt's refusal when `cmd` needs a feature whose gate is off: a hostDisk volume
    (a VM's apply or start), a snapshot or a restore."""
    if isinstance(cmd, c.SnapshotVM) and not config.enabled("Snapshot"):
        raise ValidationError("snapshot feature gate not enabled", field="kind")
    if isinstance(cmd, c.RestoreVM) and not config.enabled("Snapshot"):
        raise ValidationError("Snapshot/Restore feature gate not enabled", field="kind")
    for path, gate in gated_paths(spec or {}).items():
        if not config.enabled(gate):
            raise ValidationError(f"{gate} feature gate is not enabled", field=path)
