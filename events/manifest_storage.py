"""Storage manifests in: a core `v1` PersistentVolumeClaim and a CDI DataVolume as volume commands.

Both become the volume aggregate's `CreateVolume` (a DataVolume is its claim of the same name, as
CDI makes it), so one fold, one placement and one node store serve `volume create`,
`image-upload`, claims and DataVolumes alike. Split from `manifest.py` to keep it readable; the
checks name each field and say why, in Kubernetes' and CDI's words where they have some.
"""

from __future__ import annotations

from typing import Any, Final

from events import fields as f
from events.commands import CreateVolume
from events.datasources import PREFIX as DATASOURCE
from events.fields import fail as _fail
from events.manifest_reader import Reader, names
from events.names import check_name
from events.volumes import clone_source

PVC_API: Final = "v1"
CDI_API: Final = "cdi.kubevirt.io/v1beta1"
STORAGE_KINDS: Final = {PVC_API: ("PersistentVolumeClaim",), CDI_API: ("DataVolume", "DataSource")}
SELECTED_NODE: Final = "volume.kubernetes.io/selected-node"  # a claim bound ahead of its VM
_PVC_SPEC: Final = names(
    "accessModes resources storageClassName volumeMode selector volumeName dataSource "
    "dataSourceRef volumeAttributesClassName"
)
_DV_SPEC: Final = names(
    "source sourceRef pvc storage contentType preallocation priorityClassName checkpoints "
    "finalCheckpoint"
)
_DV_SOURCES: Final = ("http", "registry", "upload", "blank", "pvc")
_DV_OTHER_SOURCES: Final = names("s3 gcs imageio vddk snapshot")
_HTTP: Final = names("url certConfigMap secretRef extraHeaders secretExtraHeaders")
_REGISTRY: Final = names("url imageStream pullMethod certConfigMap secretRef platform")
_PVC_SOURCE: Final = names("name namespace")
_SOURCE_REF: Final = names("kind name namespace")


def _claim(
    spec: dict[str, Any], path: str, reader: Reader, *, fields: frozenset[str], modes_needed: bool,
    size_needed: bool = True,
) -> tuple[str, list[str], str]:  # fmt: skip
    """Size, access modes and storage class of a claim spec (a PVC's, a DataVolume's
    `pvc`/`storage`); a clone's `storage` may leave the size to its source's, as CDI does."""
    reader.section(spec, path, fields=fields)
    modes = f.entries(spec.get("accessModes"), f"{path}.accessModes")
    for i, mode in enumerate(modes):
        f.text(mode, f"{path}.accessModes[{i}]")
    if modes_needed and not modes:
        raise _fail(f"{path}.accessModes", "Required value: at least 1 access mode is required")
    resources = f.mapping(spec.get("resources"), f"{path}.resources")
    requests = f.mapping(resources.get("requests"), f"{path}.resources.requests")
    size = requests.get("storage")
    if size is None and not size_needed:
        size = ""
    if size is None:
        raise _fail(f"{path}.resources.requests.storage", "Required value")
    if not isinstance(size, str | int):
        raise _fail(f"{path}.resources.requests.storage", f"{f.short(size)} is not a quantity")
    storage_class = f.text(spec.get("storageClassName"), f"{path}.storageClassName") or ""
    mode = f.text(spec.get("volumeMode"), f"{path}.volumeMode", choices=("Filesystem", "Block"))
    if mode == "Block":
        reader.warn(f"{path}.volumeMode", "virtbus claims are Filesystem (a disk.img); Block is "
                                          "served as Filesystem")  # fmt: skip
    for key in ("dataSource", "dataSourceRef", "selector", "volumeName"):
        if spec.get(key) is not None:
            reader.warn(f"{path}.{key}", "not implemented by virtbus, ignored")
    return str(size), [str(m) for m in modes], storage_class


def pvc_command(
    spec: dict[str, Any], reader: Reader, *, name: str, namespace: str,
    annotations: dict[str, str], labels: dict[str, str],
) -> CreateVolume:  # fmt: skip
    size, modes, storage_class = _claim(spec, "spec", reader, fields=_PVC_SPEC, modes_needed=True)
    node = annotations.get(SELECTED_NODE)
    return CreateVolume(
        name=name, namespace=namespace, size=size, apply=True, access_modes=modes,
        storage_class=storage_class, labels=labels,
        node=check_name(node, field=f"metadata.annotations.{SELECTED_NODE}") if node else None,
    )  # fmt: skip


def dv_command(
    spec: dict[str, Any], reader: Reader, *, name: str, namespace: str, owner: str = "",
    path: str = "spec", labels: dict[str, str] | None = None,
) -> CreateVolume:  # fmt: skip
    """A DataVolume (or a VM's `dataVolumeTemplates[i]`, owned by the VM) as its claim."""
    reader.section(spec, path, fields=_DV_SPEC)
    ref = spec.get("sourceRef")
    if ref is not None and spec.get("source") is not None:
        raise _fail(path, "Data volume should have either Source or SourceRef")
    if (spec.get("pvc") is None) == (spec.get("storage") is None):
        raise _fail(f"{path}", "needs exactly one of pvc and storage")
    which = "pvc" if spec.get("pvc") is not None else "storage"
    size, modes, storage_class = _claim(
        f.mapping(spec[which], f"{path}.{which}"), f"{path}.{which}", reader, fields=_PVC_SPEC,
        modes_needed=which == "pvc", size_needed=which == "pvc" or not (
            ref is not None or "pvc" in f.mapping(spec.get("source"), f"{path}.source")),
    )  # fmt: skip
    if f.text(spec.get("contentType"), f"{path}.contentType", choices=("kubevirt", "archive")) == (
        "archive"
    ):
        raise _fail(f"{path}.contentType", "archive is not supported by virtbus; use kubevirt")
    if ref is not None:
        source = _source_ref(f.mapping(ref, f"{path}.sourceRef"), f"{path}.sourceRef", reader,
                             namespace=namespace)  # fmt: skip
    else:
        source = _source(f.mapping(spec.get("source"), f"{path}.source"), f"{path}.source",
                         reader, namespace=namespace)  # fmt: skip
    return CreateVolume(
        name=name, namespace=namespace, size=size, apply=True, access_modes=modes,
        storage_class=storage_class, source=source, data_volume=True, owner=owner,
        labels=dict(labels or {}),
    )  # fmt: skip


def _source_ref(ref: dict[str, Any], path: str, reader: Reader, *, namespace: str) -> str:
    """`datasource:NS/NAME`, resolved to a clone of the DataSource's claim when the DataVolume is
    judged (CDI's webhook reads the DataSource at create); CDI's words for what is missing."""
    reader.section(ref, path, fields=_SOURCE_REF)
    kind = f.text(ref.get("kind"), f"{path}.kind")
    if not kind:
        raise _fail(f"{path}.kind", "Missing sourceRef kind")
    if kind != "DataSource":
        raise _fail(f"{path}.kind", f"Unsupported sourceRef kind {kind}, currently only "
                                    "DataSource is supported")  # fmt: skip
    if not f.text(ref.get("name"), f"{path}.name"):
        raise _fail(f"{path}.name", "Missing sourceRef name")
    name = check_name(ref["name"], field=f"{path}.name")
    ns = check_name(f.text(ref.get("namespace"), f"{path}.namespace") or namespace,
                    field=f"{path}.namespace")  # fmt: skip
    return f"{DATASOURCE}{ns}/{name}"  # a sourceRef until the DataVolume is judged


def _source(src: dict[str, Any], path: str, reader: Reader, *, namespace: str) -> str:
    """The claim's `source` string for a DataVolume's source."""
    given = [key for key in src if key in _DV_SOURCES]
    for key in src:
        if key in _DV_OTHER_SOURCES:
            raise _fail(f"{path}.{key}", f"{key} sources are not supported by virtbus; use one of "
                                         f"{', '.join(_DV_SOURCES)}")  # fmt: skip
        if key not in _DV_SOURCES:
            reader.warn(f"{path}.{key}", "unknown field, ignored by virtbus")
    if len(given) != 1:
        raise _fail(path, f"needs exactly one of {', '.join(_DV_SOURCES)}")
    kind = given[0]
    body = f.mapping(src[kind], f"{path}.{kind}")
    if kind == "http":
        reader.section(body, f"{path}.http", fields=_HTTP)
        url = f.text(body.get("url"), f"{path}.http.url") or ""
        if not url.startswith(("http://", "https://")):
            raise _fail(f"{path}.http.url", f"{f.short(url)} is not an http(s) URL")
        for key in ("certConfigMap", "secretRef", "extraHeaders", "secretExtraHeaders"):
            if body.get(key) is not None:
                raise _fail(f"{path}.http.{key}", "not supported by virtbus (no Secrets or "
                                                  "ConfigMaps)")  # fmt: skip
        return f"import:{url}"
    if kind == "registry":
        reader.section(body, f"{path}.registry", fields=_REGISTRY)
        url = f.text(body.get("url"), f"{path}.registry.url") or ""
        if not url.startswith("docker://"):
            raise _fail(f"{path}.registry.url", f"{f.short(url)}: give docker://IMAGE "
                                                "(imageStream is OpenShift's)")  # fmt: skip
        f.text(body.get("pullMethod"), f"{path}.registry.pullMethod", choices=("pod", "node"))
        return f"registry:{url.removeprefix('docker://')}"
    if kind == "pvc":
        reader.section(body, f"{path}.pvc", fields=_PVC_SOURCE)
        source = check_name(body.get("name") or "", field=f"{path}.pvc.name")
        ns = check_name(f.text(body.get("namespace"), f"{path}.pvc.namespace") or namespace,
                        field=f"{path}.pvc.namespace")  # fmt: skip
        return clone_source(ns, source, into=namespace)
    return "upload" if kind == "upload" else ""
