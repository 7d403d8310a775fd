"""Volumes made concrete on a node: the files a domain's disks point at.

Each volume of a VM spec resolves to a file under the node's data dir (or, for hostDisk, under
the node's host root): a containerDisk from the node's image cache (pulled from a registry first
when missing, `workers/imagecache.py`), a persistentVolumeClaim's
`disk.img` in its claim directory, a hostDisk created sparse when `DiskOrCreate`, an emptyDisk
made fresh, and a cloudInitNoCloud ISO (label `cidata`) generated here. What cannot be provided
fails the start with KubeVirt's status: `ErrorPvcNotFound`, `ErrImagePull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from events.errors import VirtbusError
from events.names import Ref
from workers.imagecache import ImageCache, ImagePullError, OnPull, legacy_dir
from workers.registry import Registries
from workers.volumeplan import ResolvedVolume, VolumeNeed, volume_plan


class VolumeUnavailable(VirtbusError):
    """A volume the VM names cannot be provided; `status` is KubeVirt's printable status."""

    def __init__(self, message: str, *, status: str, field: str = "") -> None:
        super().__init__(message, field=field)
        self.status = status


def image_dir(root: Path, image: str) -> Path:
    """Where an image pre-filled by hand is found on a node (pulled ones are kept by digest)."""
    return legacy_dir(root, image)


def claim_dir(root: Path, namespace: str, claim: str) -> Path:
    return root / "volumes" / namespace / claim


def _format_of(path: Path) -> Literal["raw", "qcow2"]:
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def _overlay(path: Path, *, base: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _format_of(base)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(path)],
        check=True, capture_output=True,
    )  # fmt: skip


def _cidata_iso(
    path: Path, *, user_data: str, network_data: str | None, instance: str, hostname: str
) -> None:
    import pycdlib

    # KubeVirt's meta-data: the instance's id, and the VMI's name as its hostname.
    meta = f"instance-id: {instance}\nlocal-hostname: {hostname}\n"
    files = {"user-data": user_data, "meta-data": meta}
    if network_data:
        files["network-config"] = network_data
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for i, (name, text) in enumerate(files.items()):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{i};1", rr_name=name, joliet_path=f"/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    iso.write(str(path))
    iso.close()


def _make(path: Path, make: Callable[[], None], *, field: str, what: str) -> None:
    """Run `make`, which writes the new file `path`. If it fails part way (the node's disk is
    full: ENOSPC, read-only...), the half file is removed, never left to look whole to the next
    start, and the start fails saying why."""
    try:
        make()
    except (OSError, subprocess.CalledProcessError) as err:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        why = getattr(err, "stderr", b"").decode(errors="replace").strip() or err
        raise VolumeUnavailable(
            f"{field}: cannot make {what}: {why}", status="Failed", field=field
        ) from err


class Volumes:
    def __init__(
        self, root: Path, *, host_root: Path | None = None, images: ImageCache | None = None
    ) -> None:
        # Absolute: these paths go into domain XML and qcow2 backing files, which libvirt and
        # qemu-img read relative to their own directories (`virtbus up --data-dir .virtbus`).
        self.root = root.absolute()
        # where hostDisk paths live; None = the real host
        self.host_root = host_root.absolute() if host_root is not None else None
        self.images = images or ImageCache(self.root, Registries.from_env())

    def instance_dir(self, namespace: str, name: str) -> Path:
        return self.root / "vms" / namespace / name

    async def remove_instance(self, ref: Ref) -> None:
        """An ended instance's own files (overlays, emptyDisks, cloud-init) go; claims stay."""
        await asyncio.to_thread(shutil.rmtree, self.instance_dir(ref.namespace, ref.name), True)

    async def resolve(
        self, spec: dict[str, Any], *, namespace: str, name: str, uid: str,
        on_pull: OnPull | None = None,
    ) -> dict[str, ResolvedVolume]:  # fmt: skip
        """Each volume's file; container disks are pulled first where missing (`on_pull` hears
        of each pull)."""
        plan = volume_plan(spec)
        out = {}
        for i, need in enumerate(plan):
            field = f"spec.template.spec.volumes[{i}]"
            base = await self._image(need, field=field, on_pull=on_pull)
            out[need.name] = await asyncio.to_thread(
                self._resolve, need, namespace=namespace, name=name, uid=uid, field=field,
                image=base,
            )  # fmt: skip
        return out

    async def resolve_volume(
        self, volume: dict[str, Any], *, namespace: str, name: str, uid: str
    ) -> ResolvedVolume:
        """One volume outside the spec (a hotplug); errors name the field `volume`."""
        [need] = volume_plan({"template": {"spec": {"volumes": [volume]}}})
        base = await self._image(need, field="volume", on_pull=None)
        return await asyncio.to_thread(
            self._resolve, need, namespace=namespace, name=name, uid=uid, field="volume",
            image=base,
        )  # fmt: skip

    async def _image(self, need: VolumeNeed, *, field: str, on_pull: OnPull | None) -> Path | None:
        if need.type != "containerDisk":
            return None
        try:
            return await self.images.ensure(
                need.image or "", field=f"{field}.containerDisk.image", on_pull=on_pull
            )
        except ImagePullError as err:
            raise VolumeUnavailable(err.message, status=err.status, field=err.field) from err

    def persistent_path(self, need: VolumeNeed, *, namespace: str) -> Path:
        """Where a persistentVolumeClaim's or hostDisk's data lives on this node."""
        if need.type == "persistentVolumeClaim":
            return claim_dir(self.root, namespace, need.claim_name or "") / "disk.img"
        if need.type != "hostDisk":
            raise ValueError(f"volume {need.name!r} ({need.type}) keeps no data on the node")
        path = Path(need.path or "")
        if self.host_root is not None:
            path = self.host_root / path.relative_to(path.anchor)
        return path

    def _resolve(
        self, need: VolumeNeed, *, namespace: str, name: str, uid: str, field: str,
        image: Path | None = None,
    ) -> ResolvedVolume:  # fmt: skip
        if need.type == "containerDisk":
            assert image is not None  # `_image` found or pulled it, or raised
            # The cached image is shared: each instance writes to its own qcow2 overlay.
            overlay = self.instance_dir(namespace, name) / f"{need.name}.qcow2"
            _make(overlay, lambda: _overlay(overlay, base=image), field=field,
                  what=f"an overlay of {image}")  # fmt: skip
            return ResolvedVolume(path=str(overlay), format="qcow2")
        if need.type == "persistentVolumeClaim":
            disk = self.persistent_path(need, namespace=namespace)
            if not disk.is_file():
                raise VolumeUnavailable(
                    f'{field}: persistentvolumeclaim "{need.claim_name}" not found',
                    status="ErrorPvcNotFound", field=field,
                )  # fmt: skip
            return ResolvedVolume(path=str(disk), format=_format_of(disk))
        if need.type == "hostDisk":
            path = self.persistent_path(need, namespace=namespace)
            if not path.exists():
                if need.disk_type != "DiskOrCreate":
                    raise VolumeUnavailable(
                        f"{field}: hostDisk {need.path} does not exist (type Disk)",
                        status="ErrorDiskNotFound", field=field,
                    )  # fmt: skip
                _make(path, lambda: _sparse(path, need.capacity or 0), field=field,
                      what=f"hostDisk {need.path}")  # fmt: skip
            return ResolvedVolume(path=str(path), format=_format_of(path))
        scratch = self.instance_dir(namespace, name)
        if need.type == "emptyDisk":
            path = scratch / f"{need.name}.img"
            _make(path, lambda: _sparse(path, need.capacity or 0), field=field,
                  what="an emptyDisk")  # fmt: skip
            return ResolvedVolume(path=str(path))
        iso = scratch / f"{need.name}-cidata.iso"
        _make(iso, lambda: _cidata_iso(iso, user_data=need.user_data or "",
                                       network_data=need.network_data, instance=uid,
                                       hostname=name),
              field=field, what="the cloud-init disk")  # fmt: skip
        return ResolvedVolume(path=str(iso), readonly=True)
