"""kubectl's `patch` and `edit` over the bus: the live object changed, then applied whole.

Both read the object as `get -o json` would show it (spec and identity, no status), change it (a
JSON merge patch or a JSON patch; or the user's editor on its YAML), and record the result as an
apply made on the version read: a write in between is refused with the API server's words. A
patch is then made again on the new version (up to five times, as kubectl's retries); an edit is
not, since the user edited what is no longer there: the edited copy is kept in a file and the
refusal says where, as kubectl does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import typer
import yaml

from bus.client import Rejected, send, session
from bus.store import EventStore
from bus.vms import VMRepository
from events import commands as c
from events.errors import ValidationError, VirtbusError
from events.manifest import to_commands
from events.names import Ref
from events.replicasets import ReplicaSetState, apply_rs
from virtctl import kinds as k
from virtctl.getting import is_vm
from virtctl.patching import apply_patch
from virtctl.verbs import err

_CONFLICT_TRIES = 5
CHANGEABLE = (k.VM, k.VMIRS, k.KUBEVIRT, *k.INSTANCETYPES)


async def patch(url: str, *, kind: k.Kind, name: str, namespace: str, kind_of_patch: str,
                patch_text: str, actor: str) -> int:  # fmt: skip
    """`kubectl patch --type merge|json`."""
    if kind_of_patch == "strategic":  # refused before anything is read, as the server would
        apply_patch({}, {}, kind_of_patch=kind_of_patch)
    try:
        body = json.loads(patch_text)
    except ValueError as e:
        raise ValidationError(f"--patch: not JSON: {e}", field="patch") from None
    _changeable(kind, verb="patching")
    async with session(url) as nc:
        for _ in range(_CONFLICT_TRIES):
            doc, version = await _read(nc, kind=kind, name=name, namespace=namespace)
            patched = apply_patch(copy.deepcopy(doc), body, kind_of_patch=kind_of_patch)
            try:
                changed = await _write(nc, doc, patched, version=version, namespace=namespace,
                                       actor=actor, what="patch")  # fmt: skip
            except Rejected as e:
                if e.message.startswith("Operation cannot be fulfilled"):
                    continue  # changed meanwhile: read it again and patch the new version
                raise
            typer.echo(f"{kind.object_name(name)} patched{'' if changed else ' (no change)'}")
            return 0
    raise VirtbusError(f"{kind.object_name(name)}: it kept changing while being patched; "
                       "try again")  # fmt: skip


async def edit(url: str, *, kind: k.Kind, name: str | None, namespace: str, actor: str) -> int:
    """`kubectl edit`: the object's YAML in `$KUBE_EDITOR`, `$EDITOR` or vi; saved unchanged, it
    is left alone (`Edit cancelled, no changes made.`). No `name`: the KubeVirt object, the one
    there is (in `namespace`)."""
    _changeable(kind, verb="editing")
    async with session(url) as nc:
        if name is None:
            name = await _the_kubevirt(nc, namespace=namespace)
        doc, version = await _read(nc, kind=kind, name=name, namespace=namespace)
        text = yaml.safe_dump(doc, sort_keys=False)
        edited_text = await asyncio.to_thread(_in_editor, text, name)
        if edited_text.strip() == text.strip():
            typer.echo("Edit cancelled, no changes made.")
            return 0
        try:
            edited = yaml.safe_load(edited_text)
        except yaml.YAMLError as e:
            raise ValidationError(f"the edited object is not YAML: {e}", field="edit") from None
        try:
            await _write(nc, doc, edited, version=version, namespace=namespace, actor=actor,
                         what="an edit")  # fmt: skip
        except (Rejected, ValidationError) as e:
            kept = await asyncio.to_thread(_keep, edited_text, name)
            raise VirtbusError(f"{kind.object_name(name)} edited copy not applied: {e.message}; "
                               f"your changes are kept in {kept}") from None  # fmt: skip
        typer.echo(f"{kind.object_name(name)} edited")
        return 0


# what `label` and `annotate` change, as kubectl names it in its lines and refusals
_PAIRS = {"labels": ("label", "labeled", "labeling"),
          "annotations": ("annotation", "annotated", "annotating")}  # fmt: skip


async def label(url: str, *, kind: k.Kind, name: str, namespace: str, changes: list[str],
                overwrite: bool, actor: str) -> int:  # fmt: skip
    """`kubectl label KIND NAME k=v k2- [--overwrite]`: the object's labels changed and applied
    (retried on a write in between, as a patch)."""
    return await set_pairs(url, kind=kind, name=name, namespace=namespace, changes=changes,
                           overwrite=overwrite, actor=actor, field="labels")  # fmt: skip


async def annotate(url: str, *, kind: k.Kind, name: str, namespace: str, changes: list[str],
                   overwrite: bool, actor: str) -> int:  # fmt: skip
    """`kubectl annotate KIND NAME k=v k2- [--overwrite]`: as `label`, on the annotations."""
    return await set_pairs(url, kind=kind, name=name, namespace=namespace, changes=changes,
                           overwrite=overwrite, actor=actor, field="annotations")  # fmt: skip


async def set_pairs(url: str, *, kind: k.Kind, name: str, namespace: str, changes: list[str],
                    overwrite: bool, actor: str, field: str) -> int:  # fmt: skip
    """`metadata.<field>` (labels or annotations) changed by kubectl's `k=v` and `k-` and
    applied on the version read."""
    one, done, verb = _PAIRS[field]
    put, drop = _pair_changes(changes, one=one)
    if field == "annotations" and kind is not k.VM:  # the others' manifests drop them
        raise VirtbusError(f"{verb} {kind.resource} is not supported by virtbus: it keeps the "
                           "annotations of virtualmachines only")  # fmt: skip
    if kind not in (k.PVC, k.DV):
        _changeable(kind, verb=verb)
    async with session(url) as nc:
        for _ in range(_CONFLICT_TRIES):
            try:
                if kind in (k.PVC, k.DV):
                    did = await _label_volume(nc, kind=kind, name=name, namespace=namespace,
                                              put=put, drop=drop, overwrite=overwrite,
                                              actor=actor)  # fmt: skip
                else:
                    doc, version = await _read(nc, kind=kind, name=name, namespace=namespace)
                    changed = copy.deepcopy(doc)
                    changed["metadata"][field] = _merged(doc["metadata"].get(field) or {}, put,
                                                         drop, overwrite=overwrite)  # fmt: skip
                    did = await _write(nc, doc, changed, version=version, namespace=namespace,
                                       actor=actor, what=f"a {one}")  # fmt: skip
            except Rejected as e:
                if e.message.startswith("Operation cannot be fulfilled"):
                    continue
                raise
            # kubectl's label says when nothing changed; its annotate does not
            said = done if did or field == "annotations" else f"not {done}"
            typer.echo(f"{kind.object_name(name)} {said}")
            return 0
    raise VirtbusError(f"{kind.object_name(name)}: it kept changing while being {done}; "
                       "try again")  # fmt: skip


def _merged(
    pairs: dict[str, str], put: dict[str, str], drop: set[str], *, overwrite: bool
) -> dict[str, str]:
    for key, value in put.items():
        if not overwrite and pairs.get(key, value) != value:
            raise ValidationError(f"'{key}' already has a value ({pairs[key]}), and --overwrite "
                                  "is false", field="overwrite")  # fmt: skip
    return {key: v for key, v in {**pairs, **put}.items() if key not in drop}


async def _label_volume(nc: Any, *, kind: k.Kind, name: str, namespace: str,
                        put: dict[str, str], drop: set[str], overwrite: bool,
                        actor: str) -> bool:  # fmt: skip
    """A claim's (a DataVolume's) labels changed: its manifest applied again as it stands, new
    labels and all, on the version read (`VolumeLabeled`); whether anything changed."""
    from virtctl.volumes import volume

    v = await volume(nc, name, namespace)
    if not v.exists or (kind is k.DV and not v.data_volume):
        raise VirtbusError(kind.not_found(name))
    cmd = c.CreateVolume(
        name=name, namespace=namespace, size=str(v.size_bytes), source=v.source, apply=True,
        access_modes=list(v.access_modes), storage_class=v.storage_class,
        data_volume=v.data_volume, owner=v.owner, expected_version=v.version, actor=actor,
        labels=_merged(dict(v.labels), put, drop, overwrite=overwrite),
    )  # fmt: skip
    return bool((await send(nc, cmd)).events)


def _pair_changes(changes: list[str], *, one: str) -> tuple[dict[str, str], set[str]]:
    """kubectl's `k=v` (put) and `k-` (drop) arguments, each checked (in kubectl's words for
    labels and for annotations, which differ)."""
    put: dict[str, str] = {}
    drop: set[str] = set()
    for text in changes:
        key, eq, value = text.partition("=")
        if not eq and key.endswith("-") and len(key) > 1:
            drop.add(key[:-1])
        elif eq and key:
            put[key] = value
        else:
            bad = "invalid label spec" if one == "label" else f"invalid {one} format"
            raise ValidationError(f"{bad}: {text}", field=one)
    if both := sorted(put.keys() & drop):
        which = "a label" if one == "label" else f"the following {one}(s)"
        raise ValidationError(f"can not both modify and remove {which} in the same command: "
                              f"{', '.join(both)}", field=one)  # fmt: skip
    return put, drop


def _changeable(kind: k.Kind, *, verb: str) -> None:
    if kind not in CHANGEABLE:
        instead = ("patch the virtualmachine or virtualmachineinstancereplicaset that owns it"
                   if kind is k.VMI else "apply its manifest again")  # fmt: skip
        raise VirtbusError(f"{verb} {kind.resource} is not supported by virtbus: {instead}")


async def _the_kubevirt(nc: Any, *, namespace: str) -> str:
    from virtctl.getting import kubevirt_items

    found = await kubevirt_items(nc, name=None, namespace=namespace)
    if not found:
        raise VirtbusError(f'no KubeVirt object in namespace "{namespace}" (it is in '
                           f'"{(await kubevirt_items(nc, name=None, namespace=None))[0].namespace}"'
                           ")", field="namespace")  # fmt: skip
    return found[0].name


async def _read(nc: Any, *, kind: k.Kind, name: str, namespace: str) -> tuple[dict[str, Any], int]:
    return await (
        _live(nc, kind=kind, name=name, namespace=namespace)
        if kind in (k.VM, k.VMIRS)
        else _listed(nc, kind=kind, name=name, namespace=namespace)
    )


async def _write(nc: Any, doc: dict[str, Any], changed: Any, *, version: int, namespace: str,
                 actor: str, what: str) -> bool:  # fmt: skip
    """Apply `changed` (the object `doc` after the patch or edit) on `version`; whether anything
    changed. `Rejected` when the orchestrator says no (a stale version among the reasons)."""
    if not isinstance(changed, dict):
        raise ValidationError(f"the object after {what} is not an object", field="patch")
    for key in ("apiVersion", "kind"):
        if changed.get(key) != doc[key]:
            raise ValidationError(f"{key}: {what} cannot change it", field=key)
    meta = changed.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    where = doc["metadata"]
    if (meta.get("name"), meta.get("namespace")) != (where["name"], where.get("namespace")):
        raise ValidationError(f"metadata.name: {what} cannot rename", field="metadata.name")
    changed.pop("status", None)
    cmds, warnings = to_commands(changed, default_namespace=str(where.get("namespace") or
                                                                namespace))  # fmt: skip
    for w in warnings:
        err(f"Warning: {w.removeprefix('warning: ')}")
    cmd = msgspec.structs.replace(cmds[-1], expected_version=version, actor=actor)
    return bool((await send(nc, cmd)).events)


def _in_editor(text: str, name: str) -> str:
    """`text` as the user's editor leaves it (kubectl's order: KUBE_EDITOR, EDITOR, vi)."""
    editor = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
    path = Path(_keep(text, name))
    try:
        done = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if done.returncode != 0:
            raise VirtbusError(f"the editor ({editor}) exited with code {done.returncode}; "
                               "nothing was changed")  # fmt: skip
        return path.read_text()
    finally:
        path.unlink(missing_ok=True)


def _keep(text: str, name: str) -> str:
    """`text` in a file of its own (what the editor opens; an edit that could not be applied,
    kept as kubectl keeps it); its path."""
    with tempfile.NamedTemporaryFile("w", prefix=f"virtbus-edit-{name}-", suffix=".yaml",
                                     delete=False) as f:  # fmt: skip
        f.write(text)
    return f.name


async def _listed(
    nc: Any, *, kind: k.Kind, name: str, namespace: str
) -> tuple[dict[str, Any], int]:
    """The KubeVirt object or an instance type (preference) as `get -o json` shows it, as a
    manifest, and its version. The KubeVirt object is found by name in any namespace: there is
    one per cluster (before any apply, the default the configuration runs by)."""
    from virtctl.getting import listing

    found = await listing(nc, kind, name=name, namespace=None if kind is k.KUBEVIRT else namespace)
    obj = next((i.obj for i in found.items if i.name == name), None)
    if obj is None:
        raise VirtbusError(kind.not_found(name))
    live = obj["metadata"]
    meta = {key: live[key] for key in ("name", "namespace", "labels") if live.get(key)}
    doc = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta,
           "spec": copy.deepcopy(obj["spec"])}  # fmt: skip
    return doc, int(live.get("resourceVersion") or 0)


async def _live(nc: Any, *, kind: k.Kind, name: str, namespace: str) -> tuple[dict[str, Any], int]:
    """The object as a manifest (apiVersion, kind, metadata, spec) and its version, from the log."""
    store = EventStore(nc)
    if kind is k.VMIRS:
        rs = ReplicaSetState()
        for r in await store.read(Ref("rs", namespace, name)):
            rs = apply_rs(rs, r.envelope)
        if not rs.exists:
            raise VirtbusError(kind.not_found(name))
        labels, spec, version = rs.labels, rs.spec, rs.version
        annotations: dict[str, str] = {}
    else:
        s, _ = await VMRepository(store).get(Ref.vm(name, namespace))
        if not s.exists or not is_vm(s):
            raise VirtbusError(kind.not_found(name))
        labels, spec, version = s.labels, s.spec, s.version
        annotations = s.annotations
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "kubevirt.io/v1", "kind": kind.kind, "metadata": meta,
            "spec": copy.deepcopy(spec)}, version  # fmt: skip
