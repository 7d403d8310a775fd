"""The KubeVirt object at the orchestrator: its decision, the configuration the controller runs
by, the gates the intake holds commands to, and the seed `--migrations` gives it.

`events.kubevirt` is the pure part (fold, gates, the spec's reading); this is its use. The
controller folds every KubeVirt object into a `Settings`, whose `config` is the object's (or the
default, the seed's, before one is applied); the intake asks it before judging a command that a
gate could refuse, once the controller has folded the log as it stands.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from msgspec.structs import replace

from events import commands as c
from events import kubevirt as kv
from events import model as m
from events import work as w
from events.envelope import Envelope
from events.errors import ValidationError, stale
from events.names import Ref

SEED_ACTOR = "virtbus-orchestrator --migrations"


def decide_kubevirt(s: kv.KubeVirtState, cmd: c.Command) -> list[m.Event]:
    """Apply the object: created, changed (saying what changed), or unchanged (no event)."""
    if not isinstance(cmd, c.ApplyKubeVirt):
        raise ValidationError(f"{type(cmd).__name__} does not apply to the KubeVirt object; "
                              "it is changed by applying it again", field="kind")  # fmt: skip
    kv.read_spec(cmd.spec)
    if cmd.expected_version and cmd.expected_version != s.version:
        raise ValidationError(stale("kubevirts.kubevirt.io", cmd.name),
                              field="metadata.resourceVersion")  # fmt: skip
    if s.exists and (cmd.spec, cmd.labels) == (s.spec, s.labels):
        return []
    before = s.spec if s.exists else kv.DEFAULT_SPEC
    if cmd.actor != SEED_ACTOR:  # `--migrations` seeds what the operator of the stack chose
        kv.refuse_downtime_change(before, cmd.spec)
    return [m.KubeVirtApplied(spec=cmd.spec, labels=cmd.labels,
                              changes=kv.changes(before, cmd.spec))]  # fmt: skip


def fold_kubevirt(history: Iterable[Envelope]) -> kv.KubeVirtState:
    s = kv.KubeVirtState()
    for env in history:
        s = kv.apply_kubevirt(s, env)
    return s


class Settings:
    """The controller's fold of the KubeVirt object; `seed` stands in for its migrations until
    one is applied (a stack started with `--migrations` seeds one at once)."""

    def __init__(self, seed: w.MigrationPolicy | None = None) -> None:
        self.objects: dict[str, kv.KubeVirtState] = {}
        self.seed = seed
        self.config = self._config()

    def folded(self, key: str, env: Envelope) -> None:
        self.objects[key] = kv.apply_kubevirt(self.objects.get(key) or kv.KubeVirtState(), env)
        self.config = self._config()

    @property
    def current(self) -> kv.KubeVirtState | None:
        return next((s for s in self.objects.values() if s.exists), None)

    def _config(self) -> kv.Config:
        if (s := self.current) is not None:
            return kv.config_of(s.spec)
        config = kv.config_of(None)
        return config if self.seed is None else replace(config, migrations=self.seed)

    def admit(self, ref: Ref, cmd: c.Command, spec: dict[str, Any] | None) -> None:
        """Raise KubeVirt's refusal for a command the configuration does not allow."""
        if isinstance(cmd, c.ApplyKubeVirt):
            s = self.current
            if s is not None and (s.namespace, s.name) != (ref.namespace, ref.name):
                raise ValidationError("Kubevirt is already created", field="metadata.name")
            return
        kv.refuse_gated(self.config, cmd, spec)

    def seed_command(self) -> c.ApplyKubeVirt | None:
        """What `--migrations` asks of the object: created with the seed's settings, or its
        migrations set to them; None when it already says so."""
        if self.seed is None:
            return None
        s = self.current
        if kv.config_of(s.spec if s is not None else None).migrations == self.seed:
            return None
        spec = copy.deepcopy(s.spec if s is not None else kv.DEFAULT_SPEC)
        conf = spec.setdefault("configuration", {})
        wanted = kv.policy_spec(self.seed)
        kept = {k: v for k, v in (conf.get("migrations") or {}).items() if k not in kv.POLICY_KEYS}
        conf["migrations"] = {**kept, **wanted}
        if not conf["migrations"]:
            del conf["migrations"]
        where = (s.namespace, s.name) if s is not None else (kv.DEFAULT_NAMESPACE, kv.DEFAULT_NAME)
        return c.ApplyKubeVirt(namespace=where[0], name=where[1], spec=spec,
                               labels=s.labels if s is not None else {},
                               actor=SEED_ACTOR)  # fmt: skip


def needs_config(cmd: c.Command) -> bool:
    """Whether judging `cmd` depends on the configuration (cheap: no await for the rest)."""
    if isinstance(cmd, c.ApplyVM):
        return bool(kv.gated_paths(cmd.spec))
    return isinstance(cmd, c.SnapshotVM | c.RestoreVM | c.ApplyKubeVirt)
