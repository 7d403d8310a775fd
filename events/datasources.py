"""CDI DataSources (cdi.kubevirt.io/v1beta1): a name for a claim that DataVolumes clone, pure.

KubeVirt's user guide (instance types, `virtctl create vm --volume-import type:ds`) boots VMs
from DataSources: `spec.source.pvc` names a golden image's claim, and a DataVolume's
`sourceRef: {kind: DataSource}` clones it. virtbus records a DataSource as an aggregate of its
own (`datasource`, with a history) and resolves a sourceRef when the DataVolume is judged, so the
clone is of the claim the DataSource named then. Its `Ready` condition is read off the claim as
CDI's DataSource controller computes it. virtbus has no VolumeSnapshots, so a snapshot source is
refused rather than recorded as a DataSource that could never be ready.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from events import commands as c
from events import model as m
from events.envelope import Envelope
from events.errors import ValidationError
from events.folding import total
from events.spec_objects import SpecObject, decide_object, fold_object
from events.volumes import BOUND, VolumeState, dv_phase

API: Final = "cdi.kubevirt.io/v1beta1"
KIND: Final = "DataSource"
RESOURCE: Final = "datasources.cdi.kubevirt.io"
PREFIX: Final = "datasource:"  # a DataVolume's source while its sourceRef is unresolved
NO_PVC: Final = "No source PVC set"  # CDI's DataSource controller's words


DataSourceState = SpecObject  # (events/spec_objects.py)


@total
def apply_datasource(s: DataSourceState, env: Envelope) -> DataSourceState:
    return fold_object(s, env, applied=m.DataSourceApplied, deleted=m.DataSourceDeleted)


def check_spec(spec: dict[str, Any], *, namespace: str) -> dict[str, Any]:
    """The spec as recorded (`source.pvc.namespace` filled in, as CDI's controller reads it), or
    a refusal naming the field."""
    source = spec.get("source")
    if source is None:
        return spec
    if not isinstance(source, dict):
        raise ValidationError("spec.source: expected a mapping", field="spec.source")
    for key in source:
        if key == "snapshot":
            raise ValidationError("spec.source.snapshot: virtbus has no VolumeSnapshots; give "
                                  "spec.source.pvc", field="spec.source.snapshot")  # fmt: skip
        if key == "dataSource":
            raise ValidationError("spec.source.dataSource: DataSource pointers are not supported "
                                  "by virtbus; give spec.source.pvc",
                                  field="spec.source.dataSource")  # fmt: skip
        if key != "pvc":
            raise ValidationError(f'spec.source.{key}: unknown field "{key}"; virtbus '
                                  "DataSources have spec.source.pvc",
                                  field=f"spec.source.{key}")  # fmt: skip
    pvc = source.get("pvc")
    if pvc is None:
        return spec
    if not isinstance(pvc, dict) or not isinstance(pvc.get("name"), str) or not pvc["name"]:
        raise ValidationError("spec.source.pvc.name: Required value",
                              field="spec.source.pvc.name")  # fmt: skip
    ns = pvc.get("namespace") or namespace
    return {**spec, "source": {"pvc": {"name": pvc["name"], "namespace": ns}}}


def decide_datasource(s: DataSourceState, cmd: c.Command) -> list[m.Event]:
    """Apply (created, replaced, or unchanged: no event) or delete a DataSource."""
    if not isinstance(cmd, c.ApplyDataSource | c.DeleteDataSource):
        raise ValidationError(f"{type(cmd).__name__} does not apply to a DataSource", field="kind")
    spec = check_spec(cmd.spec, namespace=cmd.namespace) if isinstance(
        cmd, c.ApplyDataSource) else None  # fmt: skip
    return decide_object(s, cmd, resource=RESOURCE, applied=m.DataSourceApplied,
                         deleted=m.DataSourceDeleted, spec=spec)  # fmt: skip


def source_pvc(s: DataSourceState) -> tuple[str, str] | None:
    """The (namespace, name) of the claim the DataSource names, or None."""
    pvc = (s.spec.get("source") or {}).get("pvc")
    if not isinstance(pvc, dict):
        return None
    return str(pvc.get("namespace") or s.namespace), str(pvc["name"])


def ready(s: DataSourceState, claim: VolumeState | None) -> tuple[str, str, str]:
    """CDI's `Ready` condition (status, reason, message) given the claim `source.pvc` names: one
    that exists is ready unless it is a DataVolume still being filled."""
    if source_pvc(s) is None:
        return "False", "NoSource", NO_PVC
    if claim is None or not claim.exists:
        return "False", "NotFound", "PVC not found"
    if claim.data_volume and claim.phase != BOUND:
        phase = dv_phase(claim)
        return "False", phase, f"Import DataVolume phase {phase}"
    return "True", "Ready", "DataSource is ready to be consumed"


def resolve(ref: str, *, known: Callable[[str, str], DataSourceState | None]) -> tuple[str, str]:
    """The claim a DataVolume's sourceRef (`datasource:NS/NAME`) clones, or CDI's refusal naming
    `spec.sourceRef`."""
    namespace, _, name = ref.removeprefix(PREFIX).partition("/")
    found = known(namespace, name)
    if found is None or not found.exists:
        raise ValidationError(f"SourceRef {KIND}/{namespace}/{name} not found",
                              field="spec.sourceRef")  # fmt: skip
    where = source_pvc(found)
    if where is None:
        raise ValidationError(f"Empty source field in '{name}'. DataSource may not be ready yet",
                              field="spec.sourceRef")  # fmt: skip
    return where


def datasource_object(s: DataSourceState, claim: VolumeState | None) -> dict[str, Any]:
    """The DataSource as `kubectl get datasource NAME -o yaml` shows it."""
    meta: dict[str, Any] = {"name": s.name, "namespace": s.namespace,
                            "resourceVersion": str(s.version)}  # fmt: skip
    if s.created is not None:
        meta["creationTimestamp"] = s.created.strftime("%Y-%m-%dT%H:%M:%SZ")
    if s.labels:
        meta["labels"] = dict(s.labels)
    status, reason, message = ready(s, claim)
    condition = {"type": "Ready", "status": status, "reason": reason, "message": message}
    out_status: dict[str, Any] = {"conditions": [condition]}
    if s.spec.get("source"):
        out_status["source"] = dict(s.spec["source"])
    return {"apiVersion": API, "kind": KIND, "metadata": meta, "spec": dict(s.spec),
            "status": out_status}  # fmt: skip
