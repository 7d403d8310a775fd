"""A VM spec's volumes, as a node must provide them before it can render the domain: what each
needs (an image pulled, a disk created or found, a claim's file, a NoCloud seed) and the file it
becomes. Pure, and apart from `workers/domain.py` (the XML), which takes the resolved files.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from events.fields import entries
from events.fields import fail as _fail
from events.fields import mapping as _mapping
from events.quantity import parse_quantity

SPEC: Final = "spec.template.spec"

VolumeType = Literal[
    "containerDisk", "hostDisk", "persistentVolumeClaim", "cloudInitNoCloud", "emptyDisk"
]
VOLUME_TYPES: Final[tuple[VolumeType, ...]] = (
    "containerDisk", "hostDisk", "persistentVolumeClaim", "cloudInitNoCloud", "emptyDisk"
)  # fmt: skip


class ResolvedVolume(msgspec.Struct, frozen=True):
    """A volume made concrete on this node: the file (or block device, for a lun) to attach."""

    path: str
    format: Literal["raw", "qcow2"] = "raw"
    readonly: bool = False


VolumePaths = Mapping[str, ResolvedVolume]


class VolumeNeed(msgspec.Struct, frozen=True):
    """What the worker must provide for one volume before the domain can be rendered."""

    name: str
    type: VolumeType
    image: str | None = None  # containerDisk
    path: str | None = None  # hostDisk
    disk_type: Literal["Disk", "DiskOrCreate"] | None = None  # hostDisk
    capacity: int | None = None  # bytes: hostDisk (to create) and emptyDisk
    claim_name: str | None = None  # persistentVolumeClaim
    user_data: str | None = None  # cloudInitNoCloud, base64 already decoded
    network_data: str | None = None  # cloudInitNoCloud


def entry_maps(value: Any, field: str) -> list[dict[str, Any]]:
    return [_mapping(item, f"{field}[{i}]") for i, item in enumerate(entries(value, field))]


def vmi_spec(spec: dict[str, Any]) -> dict[str, Any]:
    template = _mapping(_mapping(spec, "spec").get("template"), "spec.template")
    return _mapping(template.get("spec"), SPEC)


def volume_plan(spec: dict[str, Any]) -> list[VolumeNeed]:
    """What each volume of a VM spec needs the caller to provide, in spec order."""
    needs: list[VolumeNeed] = []
    for i, vol in enumerate(entry_maps(vmi_spec(spec).get("volumes"), f"{SPEC}.volumes")):
        at = f"{SPEC}.volumes[{i}]"
        name = vol.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(f"{at}.name", "a name is required")
        kinds = [key for key in vol if key != "name"]
        if kinds == ["dataVolume"]:  # CDI names the DataVolume's claim after it
            dv = _mapping(vol["dataVolume"], f"{at}.dataVolume")
            if not isinstance(dv.get("name"), str) or not dv["name"]:
                raise _fail(f"{at}.dataVolume.name", "is required")
            needs.append(VolumeNeed(name=name, type="persistentVolumeClaim", claim_name=dv["name"]))
            continue
        if len(kinds) != 1 or kinds[0] not in VOLUME_TYPES:
            got = ", ".join(kinds) or "no source"
            raise _fail(
                at,
                f"volume {name!r} has {got}; virtbus supports {', '.join(VOLUME_TYPES)}, "
                "dataVolume",
            )
        kind: VolumeType = kinds[0]
        needs.append(_need(name, kind, _mapping(vol[kind], f"{at}.{kind}"), f"{at}.{kind}"))
    return needs


def _need(name: str, kind: VolumeType, src: dict[str, Any], at: str) -> VolumeNeed:
    def text(key: str, *, required: bool = True) -> str | None:
        value = src.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise _fail(f"{at}.{key}", "is required" if value is None else "must be a string")
        return value

    def size(key: str) -> int | None:
        return None if src.get(key) is None else parse_quantity(src[key], field=f"{at}.{key}")

    if kind == "containerDisk":
        return VolumeNeed(name=name, type=kind, image=text("image"))
    if kind == "persistentVolumeClaim":
        return VolumeNeed(name=name, type=kind, claim_name=text("claimName"))
    if kind == "emptyDisk":
        if (capacity := size("capacity")) is None:
            raise _fail(f"{at}.capacity", "is required")
        return VolumeNeed(name=name, type=kind, capacity=capacity)
    if kind == "hostDisk":
        disk_type = src.get("type")
        if disk_type not in ("Disk", "DiskOrCreate"):
            raise _fail(f"{at}.type", f"{disk_type!r} is not one of Disk, DiskOrCreate")
        capacity = size("capacity")
        if capacity is None and disk_type == "DiskOrCreate":  # we could not size the new file
            raise _fail(f"{at}.capacity", "is required when type is DiskOrCreate")
        return VolumeNeed(
            name=name, type=kind, path=text("path"), disk_type=disk_type, capacity=capacity
        )
    # cloudInitNoCloud: secrets live in Kubernetes, which virtbus does not have.
    for key in ("secretRef", "networkDataSecretRef"):
        if key in src:
            raise _fail(f"{at}.{key}", "secrets are not supported; inline the data instead")
    user, network = _cloud_data(src, "userData", at), _cloud_data(src, "networkData", at)
    if user is None and network is None:
        raise _fail(f"{at}.userData", "or networkData is required")
    return VolumeNeed(name=name, type=kind, user_data=user, network_data=network)


def _cloud_data(src: dict[str, Any], key: str, at: str) -> str | None:
    if isinstance(plain := src.get(key), str):
        return plain
    if isinstance(encoded := src.get(f"{key}Base64"), str):
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _fail(f"{at}.{key}Base64", "is not base64 of UTF-8 text") from exc
    if plain is not None or encoded is not None:
        raise _fail(f"{at}.{key}", "must be a string")
    return None
