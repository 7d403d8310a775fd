"""KubeVirt's MigrationPolicy (`migrations.kubevirt.io/v1alpha1`): migration settings for the VMIs
its selectors pick, over the cluster's (the KubeVirt object's `spec.configuration.migrations`).

Pure: the fold of one policy, its judgement, and the choice KubeVirt's migration controller makes
(pkg/virt-controller/watch/migration/migrationpolicy.go): of the policies whose every selector
label the VMI (`virtualMachineInstanceSelector`) and its namespace (`namespaceSelector`) carry,
the one matching the most labels, the VMI's counting first on a tie, then the first name in
lexical order. A namespace's labels are Kubernetes' own `kubernetes.io/metadata.name: NAME`
(virtbus's namespaces carry no others). What the chosen policy sets replaces the cluster's
setting for that migration; what it leaves out keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from msgspec.structs import replace

from events import model as m
from events import work as w
from events.envelope import Envelope
from events.errors import ValidationError
from events.folding import total
from events.quantity import parse_quantity
from events.spec_objects import SpecObject, decide_object, fold_object

API: Final = "migrations.kubevirt.io/v1alpha1"
KIND: Final = "MigrationPolicy"
RESOURCE: Final = "migrationpolicies.migrations.kubevirt.io"
NAMESPACE_LABEL: Final = "kubernetes.io/metadata.name"
# the settings a policy may give, as the migration's work names them
_ACTED: Final = {
    "allowAutoConverge": "allow_auto_converge", "allowPostCopy": "allow_post_copy",
    "bandwidthPerMigration": "bandwidth_bytes", "completionTimeoutPerGiB":
    "completion_timeout_per_gib",
}  # fmt: skip
_RECORDED: Final = ("allowWorkloadDisruption", "maxDowntimeMs", "experimental")
_SELECTORS: Final = ("namespaceSelector", "virtualMachineInstanceSelector")


PolicyState = SpecObject  # (events/spec_objects.py)


@total
def apply_policy(s: PolicyState, env: Envelope) -> PolicyState:
    return fold_object(s, env, applied=m.MigrationPolicyApplied, deleted=m.MigrationPolicyDeleted)


def read_policy_spec(spec: dict[str, Any]) -> list[str]:
    """Check a policy's spec as KubeVirt's admission does; the warnings it earns (what virtbus
    records and does not act on)."""
    warns: list[str] = []
    for key, value in spec.items():
        at = f"spec.{key}"
        if key in ("allowAutoConverge", "allowPostCopy"):
            if not isinstance(value, bool):
                raise ValidationError(f"{at}: {value!r} is not true or false", field=at)
        elif key == "bandwidthPerMigration":
            parse_quantity(value, field=at)
        elif key == "completionTimeoutPerGiB":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValidationError(f"{at}: {value!r} is not an integer", field=at)
            if value < 0:
                raise ValidationError(f"{at}: must not be negative", field=at)
        elif key == "selectors":
            _selectors(value)
        elif key in _RECORDED:
            warns.append(f"warning: {at}: recorded; virtbus does not act on it")
        else:
            raise ValidationError(f'{at}: unknown field "{key}"', field=at)
    return warns


def _selectors(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("spec.selectors: expected a mapping", field="spec.selectors")
    for key, labels in value.items():
        at = f"spec.selectors.{key}"
        if key not in _SELECTORS:
            raise ValidationError(f'{at}: unknown field "{key}"', field=at)
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValidationError(f"{at}: expected labels (a mapping of strings)", field=at)


def decide_policy(s: PolicyState, cmd: Any) -> list[m.Event]:
    """Apply (created, replaced, or unchanged: no event) or delete a policy."""
    if hasattr(cmd, "spec"):
        read_policy_spec(cmd.spec)  # a command from any client is judged like a manifest
    return decide_object(s, cmd, resource=RESOURCE, applied=m.MigrationPolicyApplied,
                         deleted=m.MigrationPolicyDeleted)  # fmt: skip


def _score(spec: dict[str, Any], vmi: dict[str, str], namespace: str) -> tuple[int, int] | None:
    """(labels matched in all, of them the VMI's), or None when the policy does not pick it."""
    selectors = spec.get("selectors")
    if not isinstance(selectors, dict):
        return None  # KubeVirt: a policy without selectors picks no VMI
    counts = []
    for key, labels in ((_SELECTORS[1], vmi), (_SELECTORS[0], {NAMESPACE_LABEL: namespace})):
        wanted = selectors.get(key) or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            return None
        counts.append(len(wanted))
    return counts[0] + counts[1], counts[0]


def match_policy(
    policies: Iterable[PolicyState], *, vmi_labels: dict[str, str], namespace: str
) -> PolicyState | None:
    """The policy KubeVirt would choose for a VMI with these labels in `namespace`."""
    scored = [(score, p) for p in policies if p.exists
              and (score := _score(p.spec, vmi_labels, namespace)) is not None]  # fmt: skip
    if not scored:
        return None
    return min(scored, key=lambda sp: ((-sp[0][0], -sp[0][1]), sp[1].name))[1]


def with_policy(base: w.MigrationPolicy, policy: PolicyState | None) -> w.MigrationPolicy:
    """The cluster's migration settings, with what `policy` sets in their place."""
    if policy is None:
        return base
    values: dict[str, Any] = {}
    for key, field in _ACTED.items():
        if key in policy.spec:
            value = policy.spec[key]
            values[field] = parse_quantity(value, field=f"spec.{key}") if field == (
                "bandwidth_bytes") else value  # fmt: skip
    return replace(base, **values)
