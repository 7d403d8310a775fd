"""Build the tiny Linux guest from Debian packages, once per content.

Why: every VM virtbus ran booted nothing; the guest-side lifecycle (ACPI shutdown honoured, a
guest powering off or panicking, cloud-init applied) needs a real OS, and no image can be fetched
from the internet here. So, like KubeVirt's Cirros, a kernel, busybox, dropbear and the QEMU guest
agent, from the Debian mirror: `apt-get download` of pinned versions, `dpkg-deb -x`, an initramfs
holding the whole userland, a FAT partition made and made bootable by the downloaded mtools and
syslinux, an MBR, then qcow2 (~30 MB). Boots under QEMU/KVM to a serial login in a few seconds.

The content key hashes the pinned package versions and this package's sources; the image lives in
`$VIRTBUS_GUEST_CACHE` (default `~/.cache/virtbus/guest`) under `<key>/tiny-linux.qcow2`, built
under a file lock (several test processes may ask at once) into a temp dir renamed into place.
`python -m virtbus.guest.build` prints the image's path, building it when missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from virtbus.guest import parts, rootfs

IMAGE_NAME: Final = "tiny-linux.qcow2"
CACHE_ENV: Final = "VIRTBUS_GUEST_CACHE"
KERNEL_META: Final = "linux-image-cloud-amd64"
USERLAND: Final = (
    "busybox-static", "dropbear-bin", "qemu-guest-agent",
    # dropbear serves SFTP (what OpenSSH's scp speaks) by running its /usr/lib/sftp-server
    "openssh-sftp-server",
    # the shared libraries of dropbear, sftp-server and qemu-ga (busybox is static)
    "libc6", "libcrypt1", "zlib1g", "libtomcrypt1", "libtommath1", "libgmp10", "libglib2.0-0",
    "libpcre2-8-0", "libnuma1", "libudev1", "liburing2",
)  # fmt: skip
TOOLS: Final = ("mtools", "syslinux", "syslinux-common")  # run on the build host, not in the guest
# Drivers the cloud kernel has as modules: virtio (disk, NIC, console, SCSI, balloon, RNG), the
# pvpanic device (ACPI "QEMU0001" and PCI), the power button and evdev for acpid, SCSI disks and
# cdroms, the seed's filesystems, virtio-mem (KubeVirt's memory hotplug). The cloud kernel has
# no AHCI (SATA) and no e1000 at all: the tiny guest's disks and NICs are virtio (or virtio-scsi).
MODULES: Final = (
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console", "virtio_balloon",
    "virtio_rng", "pvpanic_mmio", "pvpanic_pci", "button", "evdev", "sr_mod", "sd_mod", "isofs",
    "vfat", "nls_cp437", "nls_iso8859_1", "virtio_mem",
)  # fmt: skip
# The kernel onlines hotplugged memory itself (Debian's is built not to; udev would, and there is
# none here): virtio-mem's plugged blocks count in MemTotal as soon as they are added.
KERNEL_ARGS: Final = "console=ttyS0,115200 quiet loglevel=3 memhp_default_state=online"
SYSLINUX_CFG: Final = f"""\
DEFAULT tiny
PROMPT 0
TIMEOUT 0
LABEL tiny
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND {KERNEL_ARGS}
"""
# Guest root paths we drop from the extracted packages: documentation and locales.
PRUNE: Final = ("usr/share", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/x86_64-linux-gnu/glib-2.0")


class GuestBuildError(RuntimeError):
    """The image could not be built; the message says which step failed and why."""


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise GuestBuildError(f"{args[0]} is not installed") from e
    except subprocess.CalledProcessError as e:
        raise GuestBuildError(f"{' '.join(args)} failed: {e.stderr.strip()[-2000:]}") from e
    return done.stdout


def _candidates(packages: list[str]) -> dict[str, str]:
    """The version apt would download of each package (one `apt-cache policy` for all)."""
    found: dict[str, str] = {}
    current = ""
    for line in _run("apt-cache", "policy", *packages).splitlines():
        if not line.startswith(" "):
            current = line.rstrip(":")
        elif line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                found[current] = version
    if missing := [p for p in packages if p not in found]:
        raise GuestBuildError(f"no Debian package {', '.join(missing)}: run `apt-get update`")
    return {p: found[p] for p in packages}


def _kernel_package() -> str:
    for line in _run("apt-cache", "depends", KERNEL_META).splitlines():
        if (line := line.strip()).startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    raise GuestBuildError(f"{KERNEL_META} names no kernel package: run `apt-get update`")


def pinned_packages() -> dict[str, str]:
    """Every package the image is made of (and the tools that make it), with its version."""
    return _candidates([_kernel_package(), *USERLAND, *TOOLS])


def content_key(packages: dict[str, str]) -> str:
    """A hash of what the image is made of: package versions and this builder's sources."""
    h = hashlib.sha256(json.dumps(packages, sort_keys=True).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        h.update(source.name.encode() + b"\0" + source.read_bytes())
    return h.hexdigest()[:20]


def cache_root() -> Path:
    if configured := os.environ.get(CACHE_ENV):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virtbus" / "guest"


def guest_image(*, cache: Path | None = None, log: bool = False) -> Path:
    """The tiny guest's qcow2, built first when this content has never been built here."""
    packages = pinned_packages()
    key = content_key(packages)
    root = cache or cache_root()
    image = root / key / IMAGE_NAME
    if image.is_file():
        return image
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        if image.is_file():  # built by another process while we waited
            return image
        if log:
            print(f"building the tiny guest image {key} (once; ~1 min)", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            work = Path(tmp)
            _build(packages, work=work, out=work / "out" / IMAGE_NAME)
            (work / "out" / "packages.json").write_text(json.dumps(packages, indent=1) + "\n")
            (work / "out").rename(root / key)
    return image


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(packages: dict[str, str], *, work: Path, out: Path) -> None:
    debs = work / "debs"
    debs.mkdir()
    _run("apt-get", "download", "-q", *(f"{n}={v}" for n, v in packages.items()), cwd=debs)
    by_name = {p.name.split("_", 1)[0]: p for p in debs.glob("*.deb")}
    kernel_dir, tools, guest = work / "kernel", work / "tools", work / "root"
    for name, deb in by_name.items():
        if name.startswith("linux-image-"):
            dest = kernel_dir
        elif name in TOOLS:
            dest = tools
        else:
            dest = guest
        _run("dpkg-deb", "-x", str(deb), str(dest))
    vmlinuz = next((kernel_dir / "boot").glob("vmlinuz-*"))
    _userland(guest, kernel=kernel_dir)
    initrd = work / "initrd.gz"
    with gzip.GzipFile(initrd, "wb", mtime=0, compresslevel=6) as gz:
        gz.write(parts.cpio(guest))
    partition = work / "boot.img"
    _boot_partition(partition, tools=tools, files={"vmlinuz": vmlinuz, "initrd.gz": initrd})
    raw = work / "disk.raw"
    mbr = (tools / "usr/lib/syslinux/mbr/mbr.bin").read_bytes()
    parts.disk_with_partition(raw, mbr_code=mbr, partition=partition)
    out.parent.mkdir(parents=True)
    _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out))


def _userland(guest: Path, *, kernel: Path) -> None:
    """Turn the extracted packages under `guest` into the guest's root: busybox's applets, the
    modules it loads, its scripts; the documentation dropped."""
    for rel in PRUNE:
        shutil.rmtree(guest / rel, ignore_errors=True)
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "home/tiny", "var/log", "etc/dropbear"):
        (guest / d).mkdir(parents=True, exist_ok=True)
    busybox = guest / "bin" / "busybox"
    for applet in _run(str(busybox), "--list-full").split():
        link = guest / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(busybox, link.parent))
    (guest / "init").symlink_to("bin/busybox")  # busybox init, by the name it is run as
    modules_dir = next((kernel / "lib" / "modules").iterdir())
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    builtin = {
        Path(line).name.removesuffix(".ko").replace("-", "_")
        for line in (modules_dir / "modules.builtin").read_text().split()
    }
    try:
        order = parts.module_order(list(MODULES), index=index, builtin=builtin)
    except LookupError as e:
        raise GuestBuildError(f"{modules_dir.name}: {e}") from e
    (guest / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    for name in order:
        shutil.copyfile(index[name], guest / "lib" / "modules" / f"{name}.ko")
    for rel, (text, mode) in rootfs.files(modules=order).items():
        path = guest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():  # a busybox applet of that name: ours replaces it, not busybox
            path.unlink()
        path.write_text(text)
        path.chmod(mode)
    (guest / "tmp").chmod(0o1777)


def _boot_partition(partition: Path, *, tools: Path, files: dict[str, Path]) -> None:
    """A FAT filesystem image holding `files` and syslinux, sized to them with room to spare."""
    need = sum(p.stat().st_size for p in files.values()) + (8 << 20)
    size = max(32 << 20, -(-need // parts.ALIGN) * parts.ALIGN)
    sectors = size // parts.SECTOR
    env = {**os.environ, "PATH": f"{tools / 'usr/bin'}:{os.environ.get('PATH', '')}",
           "MTOOLS_SKIP_CHECK": "1"}  # fmt: skip
    hidden = str(parts.ALIGN // parts.SECTOR)  # where the partition starts, for the boot sector
    _run("mformat", "-i", str(partition), "-C", "-T", str(sectors), "-h", "64", "-s", "32",
         "-H", hidden, "-v", "TINYLINUX", "::", env=env)  # fmt: skip
    _run(str(tools / "usr/bin/syslinux"), "--install", str(partition), env=env)
    cfg = partition.parent / "syslinux.cfg"
    cfg.write_text(SYSLINUX_CFG)
    for name, src in {**files, "syslinux.cfg": cfg}.items():
        _run("mcopy", "-i", str(partition), str(src), f"::{name}", env=env)


def main() -> None:
    try:
        print(guest_image(log=True))
    except GuestBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
