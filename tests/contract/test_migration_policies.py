"""KubeVirt's MigrationPolicy, pure: which policy a VMI gets (KubeVirt's migration controller's
choice), what it changes of the cluster's settings, and how a policy's spec is judged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from events import commands as c
from events import model as m
from events import work as w
from events.envelope import Envelope
from events.errors import ValidationError
from events.migration_policies import (
    PolicyState,
    apply_policy,
    decide_policy,
    match_policy,
    read_policy_spec,
    with_policy,
)

NS = "kubernetes.io/metadata.name"


def policy(name: str, vmi: dict[str, str] | None = None, ns: dict[str, str] | None = None,
           **settings: Any) -> PolicyState:  # fmt: skip
    selectors: dict[str, Any] = {}
    if vmi is not None:
        selectors["virtualMachineInstanceSelector"] = vmi
    if ns is not None:
        selectors["namespaceSelector"] = ns
    return PolicyState(name=name, exists=True, spec={"selectors": selectors, **settings})


def chosen(policies: list[PolicyState], labels: dict[str, str], namespace: str = "prod") -> str:
    found = match_policy(policies, vmi_labels=labels, namespace=namespace)
    return found.name if found else ""


def test_the_policy_matching_the_most_labels_is_chosen() -> None:
    db = {"app": "db", "tier": "gold"}
    two = policy("two", {"app": "db", "tier": "gold"})
    one = policy("one", {"app": "db"})
    assert chosen([one, two], db) == "two"
    # every label of a selector must match: one that names a missing label picks nothing
    assert chosen([policy("more", {"app": "db", "zone": "a"}), one], db) == "one"
    # the namespace's own label counts as a match too
    three = policy("three", {"app": "db", "tier": "gold"}, {NS: "prod"})
    assert chosen([two, three], db) == "three"
    assert chosen([two, policy("ns2", {"app": "db"}, {NS: "prod"})], db) == "two"  # VMI's first
    assert chosen([policy("elsewhere", {"app": "db"}, {NS: "dev"})], db) == ""


def test_ties_go_to_the_vmis_labels_then_to_the_first_name() -> None:
    labels = {"app": "db"}
    by_ns, by_vmi = policy("a-ns", None, {NS: "prod"}), policy("z-vmi", {"app": "db"})
    assert chosen([by_ns, by_vmi], labels) == "z-vmi"  # one label each: the VMI's counts first
    assert chosen([policy("b", {"app": "db"}), policy("a", {"app": "db"})], labels) == "a"


def test_a_policy_without_selectors_or_deleted_picks_nothing() -> None:
    bare = PolicyState(name="bare", exists=True, spec={"allowPostCopy": True})
    empty = policy("empty")  # `selectors: {}`: every VMI, matching no label
    gone = PolicyState(name="gone", exists=False, spec={"selectors": {}})
    assert chosen([bare, gone], {"app": "db"}) == ""
    assert chosen([bare, empty, gone], {"app": "db"}) == "empty"


def test_what_a_policy_sets_replaces_the_clusters_setting() -> None:
    cluster = w.MigrationPolicy(bandwidth_bytes=64 << 20, completion_timeout_per_gib=150,
                                allow_post_copy=False, max_downtime_ms=300)  # fmt: skip
    p = policy("p", {}, allowPostCopy=True, bandwidthPerMigration="0Mi",
               completionTimeoutPerGiB=10, allowWorkloadDisruption=True)  # fmt: skip
    assert with_policy(cluster, p) == w.MigrationPolicy(
        bandwidth_bytes=0, completion_timeout_per_gib=10, allow_post_copy=True,
        max_downtime_ms=300)  # fmt: skip
    assert with_policy(cluster, None) == cluster


@pytest.mark.parametrize(("spec", "field", "says"), [
    ({"completionTimeoutPerGiB": -1}, "spec.completionTimeoutPerGiB", "must not be negative"),
    ({"allowPostCopy": "yes"}, "spec.allowPostCopy", "'yes' is not true or false"),
    ({"bandwidthPerMigration": "fast"}, "spec.bandwidthPerMigration", "fast"),
    ({"selectors": {"nodeSelector": {}}}, "spec.selectors.nodeSelector", "unknown field"),
    ({"selectors": {"namespaceSelector": {"a": 1}}}, "spec.selectors.namespaceSelector",
     "expected labels"),
    ({"bogus": 1}, "spec.bogus", 'unknown field "bogus"'),
])  # fmt: skip
def test_a_bad_spec_is_refused_naming_the_field(
    spec: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(ValidationError) as err:
        read_policy_spec(spec)
    assert err.value.field == field and says in err.value.message


def test_settings_virtbus_does_not_act_on_are_said() -> None:
    assert read_policy_spec({"maxDowntimeMs": 500, "allowWorkloadDisruption": False}) == [
        "warning: spec.maxDowntimeMs: recorded; virtbus does not act on it",
        "warning: spec.allowWorkloadDisruption: recorded; virtbus does not act on it"]  # fmt: skip


def test_a_policy_is_created_changed_unchanged_and_deleted() -> None:
    def step(s: PolicyState, e: m.Event, version: int) -> PolicyState:
        env = Envelope(id=str(version), source="/t", type="t", subject="migrationpolicy/_/p",
                       time=datetime.now(UTC), version=version, data=e)  # type: ignore[arg-type]  # fmt: skip
        return apply_policy(s, env)

    spec = {"allowPostCopy": True, "selectors": {}}
    apply = c.ApplyMigrationPolicy(name="p", spec=spec)
    [made] = decide_policy(PolicyState(), apply)
    s = step(PolicyState(), made, 1)
    assert (s.name, s.exists, s.spec) == ("p", True, spec)
    assert decide_policy(s, apply) == []  # the same again: unchanged
    with pytest.raises(ValidationError, match='"p" already exists'):
        decide_policy(s, c.ApplyMigrationPolicy(name="p", spec=spec, create_only=True))
    [gone] = decide_policy(s, c.DeleteMigrationPolicy(name="p"))
    s = step(s, gone, 2)
    assert not s.exists
    with pytest.raises(ValidationError) as err:
        decide_policy(s, c.DeleteMigrationPolicy(name="p"))
    assert err.value.message == 'migrationpolicies.migrations.kubevirt.io "p" not found'
