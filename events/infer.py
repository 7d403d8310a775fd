"""KubeVirt's `inferFromVolume`: a VM's instance type and preference named by the labels of the
claim behind one of its volumes, pure.

KubeVirt's VM mutating webhook infers on every create and update of a VM and writes what it
found into the VM (`instancetype: {name, kind}`, `inferFromVolume` gone), so the VM names an
instance type from then on, whatever becomes of the claim's labels. virtbus does the same at the
same moment: the intake resolves an `ApplyVM` before deciding it, so the VM's spec event records
the inferred names (the log says what the VM was sized by, and a replay needs no claim), and a
start, its capture of the instance type (its ControllerRevision) and its placement see an
ordinary matcher. Resolving at start instead would let a relabelled claim resize a VM later.

The paths and words are KubeVirt's (pkg/instancetype/infer): a persistentVolumeClaim volume reads
its claim's labels; a dataVolume one reads its dataVolumeTemplate's `source.pvc` claim, or its
`sourceRef` DataSource's labels, else that DataSource's claim's, else the
DataVolume's labels (a claim of the same name in virtbus), else the claim it was cloned from;
`inferFromVolumeFailurePolicy: Ignore` drops the matcher (and keeps the VM's own memory) on the
failures KubeVirt lets be ignored: a missing label, a volume or source that cannot carry one.
A missing volume or claim is refused whatever the policy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Final

from events.datasources import RESOURCE, DataSourceState, source_pvc
from events.errors import ValidationError
from events.volumes import VolumeState, clone_of

LABELS: Final = {
    "instancetype": ("instancetype.kubevirt.io/default-instancetype",
                     "instancetype.kubevirt.io/default-instancetype-kind"),
    "preference": ("instancetype.kubevirt.io/default-preference",
                   "instancetype.kubevirt.io/default-preference-kind"),
}  # fmt: skip
Claims = Callable[[str, str], VolumeState | None]  # (namespace, name): the claim, if any
DataSources = Callable[[str, str], DataSourceState | None]  # (namespace, name): the DataSource


def _no_data_sources(_namespace: str, _name: str) -> DataSourceState | None:
    return None


class _Ignorable(Exception):
    """A failure `inferFromVolumeFailurePolicy: Ignore` lets pass (KubeVirt's
    IgnoreableInferenceError)."""


def infers(spec: dict[str, Any]) -> bool:
    """Whether the VM spec asks for an instance type or preference inferred from a volume."""
    return any(isinstance(spec.get(w), dict) and spec[w].get("inferFromVolume") for w in LABELS)


def infer(
    spec: dict[str, Any], *, namespace: str, claims: Claims,
    datasources: DataSources = _no_data_sources,
) -> dict[str, Any]:  # fmt: skip
    """The VM spec with its `inferFromVolume` matchers resolved into names (or dropped, under
    Ignore), or KubeVirt's refusal naming the matcher's `inferFromVolume`."""
    if not infers(spec):
        return spec
    out = copy.deepcopy(spec)
    for which in LABELS:
        matcher = out.get(which)
        if not isinstance(matcher, dict) or not matcher.get("inferFromVolume"):
            continue
        volume = str(matcher["inferFromVolume"])
        ignore = matcher.get("inferFromVolumeFailurePolicy") == "Ignore"
        try:
            name, kind = _from_volumes(out, volume, which=which, namespace=namespace,
                                       claims=claims, datasources=datasources)  # fmt: skip
        except _Ignorable as err:
            if not ignore:
                raise ValidationError(str(err), field=f"spec.{which}.inferFromVolume") from None
            del out[which]  # KubeVirt's: "Ignored error during inference ..., clearing matcher"
            continue
        except ValidationError as err:
            raise ValidationError(err.message, field=f"spec.{which}.inferFromVolume") from None
        if which == "instancetype" and ignore:  # the fallback memory virtctl gave goes
            domain = ((out.get("template") or {}).get("spec") or {}).get("domain")
            if isinstance(domain, dict):
                domain.pop("memory", None)
        out[which] = {"name": name, **({"kind": kind} if kind else {})}
    return out


def _from_volumes(
    spec: dict[str, Any], volume: str, *, which: str, namespace: str, claims: Claims,
    datasources: DataSources,
) -> tuple[str, str]:  # fmt: skip
    vmi = (spec.get("template") or {}).get("spec") or {}
    for vol in vmi.get("volumes") or []:
        if not isinstance(vol, dict) or vol.get("name") != volume:
            continue
        if isinstance(pvc := vol.get("persistentVolumeClaim"), dict):
            return _from_claim(str(pvc.get("claimName") or ""), namespace, which, claims)
        if isinstance(dv := vol.get("dataVolume"), dict):
            return _from_data_volume(spec, str(dv.get("name") or ""), which=which,
                                     namespace=namespace, claims=claims,
                                     datasources=datasources)  # fmt: skip
        raise _Ignorable(f"unable to infer defaults from volume {volume} as type is not supported")
    raise ValidationError(f"unable to find volume {volume} to infer defaults", field="")


def _labelled(labels: dict[str, str], which: str) -> tuple[str, str]:
    name_label, kind_label = LABELS[which]
    if name_label not in labels:
        raise _Ignorable(f"unable to find required {name_label} label on the volume")
    return labels[name_label], labels.get(kind_label, "")


def _claim(name: str, namespace: str, claims: Claims) -> VolumeState:
    found = claims(namespace, name)
    if found is None or not found.exists:
        raise ValidationError(f'persistentvolumeclaims "{name}" not found', field="")
    return found


def _from_claim(name: str, namespace: str, which: str, claims: Claims) -> tuple[str, str]:
    return _labelled(_claim(name, namespace, claims).labels, which)


def _from_data_source(
    name: str, namespace: str, *, which: str, claims: Claims, datasources: DataSources
) -> tuple[str, str]:
    """The DataSource's own labels first, else its claim's (KubeVirt's inferDefaultsFromDataSource);
    a missing DataSource is refused whatever the policy, as a missing claim is."""
    found = datasources(namespace, name)
    if found is None or not found.exists:
        raise ValidationError(f'{RESOURCE} "{name}" not found', field="")
    if LABELS[which][0] in found.labels:
        return _labelled(found.labels, which)
    if (pvc := source_pvc(found)) is not None:
        return _from_claim(pvc[1], pvc[0], which, claims)
    raise _Ignorable(
        "unable to infer defaults from DataSource that doesn't provide DataVolumeSourcePVC"
    )


def _from_data_volume(
    spec: dict[str, Any], name: str, *, which: str, namespace: str, claims: Claims,
    datasources: DataSources,
) -> tuple[str, str]:  # fmt: skip
    for tpl in spec.get("dataVolumeTemplates") or []:
        if ((tpl or {}).get("metadata") or {}).get("name") != name:
            continue
        source = ((tpl.get("spec") or {}).get("source")) or {}
        if isinstance(pvc := source.get("pvc"), dict):  # KubeVirt reads the source claim's
            return _from_claim(str(pvc.get("name") or ""), str(pvc.get("namespace") or namespace),
                               which, claims)  # fmt: skip
        if isinstance(ref := (tpl.get("spec") or {}).get("sourceRef"), dict):
            if ref.get("kind") != "DataSource":
                raise _Ignorable("unable to infer defaults from DataVolumeSourceRef as Kind "
                                 f"{ref.get('kind')} is not supported")  # fmt: skip
            return _from_data_source(str(ref.get("name") or ""),
                                     str(ref.get("namespace") or namespace), which=which,
                                     claims=claims, datasources=datasources)  # fmt: skip
        raise _Ignorable("unable to infer defaults from DataVolumeSpec as DataVolumeSource is not "
                         "supported")  # fmt: skip
    # A DataVolume is its claim of the same name in virtbus: no DataVolume, KubeVirt's fallback
    # to a claim of the name is the same lookup, and so is its "not found".
    found = _claim(name, namespace, claims)
    if not found.data_volume or LABELS[which][0] in found.labels:
        return _labelled(found.labels, which)
    if found.source.startswith("clone:"):  # the DataVolume's source.pvc
        source_ns, source = clone_of(found.source, namespace)
        return _from_claim(source, source_ns, which, claims)
    raise _Ignorable(
        "unable to infer defaults from DataVolumeSpec as DataVolumeSource is not supported"
    )
