"""kubectl's `-k DIR` (kustomize), the part KubeVirt's examples use, as manifests for `-f`'s path.

KubeVirt's examples and many users' repositories keep VMs in kustomize directories; `apply -k`,
`create -k` and `delete -k` build the directory into documents here and hand them on exactly as
a file given with `-f` would be. What is read: `resources` (files, and directories with their own
kustomization, built first), `namespace`, `namePrefix`, `nameSuffix`, `commonLabels`, `labels`
(`pairs`) and `commonAnnotations`, onto each object's metadata (kustomize's field specs put them
nowhere else on KubeVirt's kinds, which it does not know). Anything else a kustomization may say
(patches, generators, images, components...) is refused by name, not ignored: the objects would
not be the ones kustomize makes. Objects come out in the order they are listed (kustomize's
`sortOptions: fifo`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import yaml

from events.errors import ValidationError
from events.manifest import parse_documents

FILES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_READ: Final = ("resources", "namespace", "namePrefix", "nameSuffix", "commonLabels", "labels",
                "commonAnnotations")  # fmt: skip
_IDENTITY: Final = ("apiVersion", "kind", "metadata")
_LABEL_ENTRY: Final = ("pairs", "includeSelectors", "includeTemplates")
_API: Final = "kustomize.config.k8s.io/v1beta1"


def render(directory: str) -> str:
    """The documents `directory`'s kustomization makes, as one multi-document YAML text."""
    return yaml.safe_dump_all(build(Path(directory), seen=()), sort_keys=False)


def build(directory: Path, *, seen: tuple[Path, ...]) -> list[dict[str, Any]]:
    """The objects of `directory`'s kustomization; `seen` are the directories building it (a
    kustomization that includes itself is refused, not followed forever)."""
    here = directory.resolve()
    if here in seen:
        raise _fail(directory, "resources: it includes itself (a cycle of kustomizations)")
    path = next((here / name for name in FILES if (here / name).is_file()), None)
    if path is None:
        raise ValidationError(f"unable to find one of 'kustomization.yaml', 'kustomization.yml' "
                              f"or 'Kustomization' in directory '{here}'",
                              field="kustomize")  # fmt: skip
    k = _kustomization(path)
    docs: list[dict[str, Any]] = []
    for entry in _strings(k.get("resources"), path, "resources"):
        docs += _resource(here, entry, kustomization=path, seen=(*seen, here))
    return _unique([_transformed(doc, k, path) for doc in docs], path)


def _kustomization(path: Path) -> dict[str, Any]:
    try:
        k = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise _fail(path, f"not YAML: {e}") from None
    if k is None:
        return {}
    if not isinstance(k, dict):
        raise _fail(path, f"expected a mapping, got {type(k).__name__}")
    if k.get("apiVersion", _API) != _API or k.get("kind", "Kustomization") != "Kustomization":
        raise _fail(path, f"apiVersion {k.get('apiVersion')}, kind {k.get('kind')}: virtbus "
                          f"reads kind Kustomization of {_API} (no Components)")  # fmt: skip
    for key in k:
        if key not in _READ and key not in _IDENTITY:
            raise _fail(path, f"{key}: not supported by virtbus (it reads "
                              f"{', '.join(_READ)})")  # fmt: skip
    return k


def _resource(
    here: Path, entry: str, *, kustomization: Path, seen: tuple[Path, ...]
) -> list[dict[str, Any]]:
    """The objects of one `resources` entry: a file's documents, or a directory's build."""
    if "://" in entry or entry.startswith(("github.com/", "git@")):
        raise _fail(kustomization, f"resources: {entry}: remote resources are not supported by "
                                   "virtbus; give a file or a directory")  # fmt: skip
    target = here / entry
    if target.is_dir():
        return build(target, seen=seen)
    try:
        text = target.read_text()
    except OSError as e:
        raise _fail(kustomization, f"resources: {entry}: {e.strerror or e}") from None
    try:
        return parse_documents(text)
    except ValidationError as e:
        raise _fail(kustomization, f"resources: {entry}: {e.message}") from None


def _transformed(doc: dict[str, Any], k: dict[str, Any], path: Path) -> dict[str, Any]:
    """`doc` with the kustomization's namespace, name prefix and suffix, labels and annotations."""
    out = copy.deepcopy(doc)
    meta = out.setdefault("metadata", {})
    if not isinstance(meta, dict):
        return out  # left for the manifest's own check to name
    if k.get("namespace") is not None and not str(out.get("kind", "")).startswith(
        "VirtualMachineCluster"
    ):  # the cluster-wide kinds have no namespace to set
        meta["namespace"] = _string(k["namespace"], path, "namespace")
    if isinstance(meta.get("name"), str):
        meta["name"] = (_string(k.get("namePrefix") or "", path, "namePrefix") + meta["name"]
                        + _string(k.get("nameSuffix") or "", path, "nameSuffix"))  # fmt: skip
    labels = _pairs(k.get("commonLabels"), path, "commonLabels")
    for i, entry in enumerate(_entries(k.get("labels"), path)):
        labels.update(_pairs(entry.get("pairs"), path, f"labels[{i}].pairs"))
    _add(meta, "labels", labels)
    _add(meta, "annotations", _pairs(k.get("commonAnnotations"), path, "commonAnnotations"))
    return out


def _add(meta: dict[str, Any], key: str, pairs: dict[str, str]) -> None:
    if pairs:
        given = meta.get(key)
        meta[key] = {**(given if isinstance(given, dict) else {}), **pairs}


def _unique(docs: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """kustomize refuses two objects of one kind, name and namespace; so does virtbus."""
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        meta = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
        key = (str(doc.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")))
        if key in seen:
            shown = f"{key[1]}/{key[2]}" if key[1] else key[2]
            raise _fail(path, f"resources: {key[0]} {shown} is given twice")
        seen.add(key)
    return docs


def _entries(value: Any, path: Path) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise _fail(path, "labels: expected a list of {pairs: {...}}")
    for i, entry in enumerate(value):
        for key in entry:
            if key not in _LABEL_ENTRY:
                raise _fail(path, f"labels[{i}].{key}: not supported by virtbus (it reads "
                                  f"{', '.join(_LABEL_ENTRY)})")  # fmt: skip
    return value


def _pairs(value: Any, path: Path, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise _fail(path, f"{field}: expected a mapping of strings")
    return {key: _string(v, path, f"{field}.{key}") for key, v in value.items()}


def _strings(value: Any, path: Path, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, f"{field}: expected a list")
    return [_string(v, path, f"{field}[{i}]") for i, v in enumerate(value)]


def _string(value: Any, path: Path, field: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"{field}: expected a string, got {type(value).__name__}")
    return value


def _fail(path: Path, reason: str) -> ValidationError:
    return ValidationError(f"kustomize: {path}: {reason}", field="kustomize")
