"""The seed article's walkthrough, step by step, on real QEMU/KVM, as a user types it.

A fresh nats-server, an in-process orchestrator, one `QemuNode` and its worker (`qemustack.py`);
every step is the `virtbus` CLI in a subprocess: an ISO made with `xorriso` goes into the PVC
`iso-centos7` by `image-upload`, `examples/kubevirt-centos7.yaml` (the seed, byte for byte) is
applied unchanged, the VM starts (its `hostDisk` made sparse), a VNC client does an RFB handshake
through `vnc --proxy-only`, the VM stops, the manifest is applied again with the cdrom and the
disk's boot orders swapped (the article's `kubectl edit`), the VM starts on the new order, and is
deleted. The guest is not waited for: the ISO holds no OS. Skipped only where root, /dev/kvm or
QEMU/libvirt are missing.

`examples/walkthrough.sh` is run for real too, against what `make run` starts (`virtbus up` with
its relative data dir): on libvirt's test driver (no KVM needed) and on QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from procs import qemu_pids
from qemustack import SEED, VIRTBUS, QemuStack, qemu_stack
from registry import available, push_disk, registry_server, small_qcow2
from test_console_qemu import vnc_frame

from events import model as m
from events.names import Ref
from workers.volumes import claim_dir

NODE = "node-a"
NODE_INDEX = 33  # its own VNC/migration port range, away from the other QEMU tests' nodes
# The seed manifest as the article gives it: examples/ holds this exact copy.
SEED_SHA256 = "87e15926750047564693575431dccf3ed1372f1d31d6bacaae5ee0a7a2ef04dc"
CONTAINER_DISK = "kubevirt/virtio-container-disk"
DOMAIN = "default_centos7"
WALKTHROUGH = SEED.parent / "walkthrough.sh"


@pytest.fixture
async def wstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[QemuStack]:
    if shutil.which("xorriso") is None:
        pytest.fail("xorriso is missing: `make setup` installs it")
    assert available(), "docker-registry is missing: run `make setup`"
    base = tmp_path_factory.mktemp("wk")
    # The seed's containerDisk, as a mirror serves it: a local registry holds a small qcow2
    # under the name the manifest uses, and the node is configured to ask that registry.
    with registry_server(base / "registry") as reg:
        push_disk(reg.url, CONTAINER_DISK, small_qcow2(base / "virtio.qcow2"))
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        # A short base: the node's unix socket path must fit 108 bytes.
        async with qemu_stack(base, nodes={NODE: NODE_INDEX}) as st:
            yield st


def make_iso(path: Path, *, src: Path) -> None:
    """A small ISO 9660 image, as the user's `xorriso` makes it (not bootable: nothing boots)."""
    src.mkdir()
    (src / "README.TXT").write_text("virtbus walkthrough\n")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "CENTOS7", "-o", str(path),
                    str(src)], check=True)  # fmt: skip


def swap_boot_order(doc: dict[str, Any]) -> dict[str, Any]:
    """The article's edit: the disk boots first (bootOrder 1), the cdrom second (2)."""
    out = copy.deepcopy(doc)
    disks = {d["name"]: d for d in out["spec"]["template"]["spec"]["domain"]["devices"]["disks"]}
    disks["cdromiso"]["bootOrder"], disks["harddrive"]["bootOrder"] = 2, 1
    return out


def boot_orders(xml: str) -> dict[str, str | None]:
    """Target device (sda, vda, ...) -> its `<boot order>` in the domain XML, None without one."""
    out = {}
    for disk in ET.fromstring(xml).iter("disk"):
        target, boot = disk.find("target"), disk.find("boot")
        assert target is not None
        out[target.get("dev", "")] = None if boot is None else boot.get("order")
    return out


def disk_targets(xml: str) -> dict[str, tuple[str, str]]:
    """Source file -> (device kind, bus) of each disk in the domain XML."""
    out = {}
    for disk in ET.fromstring(xml).iter("disk"):
        source, target = disk.find("source"), disk.find("target")
        assert source is not None and target is not None
        out[source.get("file", "")] = (disk.get("device", ""), target.get("bus", ""))
    return out


def guests(under: Path) -> list[int]:
    """This walkthrough's QEMU processes (other stacks on this machine may run a centos7 too):
    those whose command line names a file under `under`."""
    mine = []
    for pid in qemu_pids(DOMAIN):
        with contextlib.suppress(OSError):
            if str(under).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                mine.append(pid)
    return mine


async def ok(stack: QemuStack, *args: str) -> str:
    code, out, err = await stack.virtbus(*args)
    assert code == 0, f"virtbus {' '.join(args)}: exit {code}: {err}"
    return out


@pytest.mark.kvm
async def test_seed_walkthrough_on_real_kvm(wstack: QemuStack, tmp_path: Path) -> None:
    seed = SEED.read_bytes()
    assert hashlib.sha256(seed).hexdigest() == SEED_SHA256  # the article's manifest, unchanged

    # virtctl image-upload, with the article's flags: the ISO into a new PVC, bytes intact.
    iso = tmp_path / "centos7.iso"
    make_iso(iso, src=tmp_path / "iso-root")
    code, out, err = await wstack.virtbus(
        "image-upload", f"--image-path={iso}", "--pvc-name=iso-centos7", "--pvc-size=5G",
        "--uploadproxy-url=https://10.98.254.51", "--insecure", "--wait-secs=240",
    )  # fmt: skip
    assert code == 0, err
    assert out == "Uploading centos7.iso completed successfully\n"
    assert "--uploadproxy-url https://10.98.254.51 is not used" in err
    claim = claim_dir(wstack.data_dir, "default", "iso-centos7") / "disk.img"
    assert claim.read_bytes()[: iso.stat().st_size] == iso.read_bytes()
    pvc = json.loads(await ok(wstack, "get", "pvc", "iso-centos7", "-o", "json"))
    assert (pvc["status"]["phase"], pvc["status"]["capacity"]) == ("Bound", {"storage": "5G"})

    # kubectl apply -f kubevirt-centos7.yaml: the very file, `running: false`.
    out = await ok(wstack, "apply", "-f", str(SEED))
    assert out == "virtualmachine.kubevirt.io/centos7 created\n"
    assert (await wstack.state("centos7")).status == "Stopped"

    # virtctl start centos7
    await ok(wstack, "start", "centos7")
    await ok(wstack, "wait", "vm", "centos7", "--for", "status=Running", "--timeout", "60")
    assert len(guests(wstack.base)) == 1
    vm = json.loads(await ok(wstack, "get", "vm", "centos7", "-o", "json"))
    assert vm["spec"]["running"] is True  # as `virtctl start` leaves it, for `kubectl edit`
    pulls = [r.envelope.data for r in await wstack.store.read(Ref.vm("centos7"))
             if isinstance(r.envelope.data, m.ImagePulled)]  # fmt: skip
    assert [(p.image, p.registry) for p in pulls] == [
        (CONTAINER_DISK, os.environ["VIRTBUS_REGISTRIES"])  # the containerDisk, from the mirror
    ]
    host_disk = wstack.host_root / "data" / "disk.img"  # hostDisk DiskOrCreate, 30Gi, sparse
    st = os.stat(host_disk)
    assert st.st_size == 30 << 30
    assert st.st_blocks * 512 < 1 << 20, f"{st.st_blocks * 512} bytes allocated"
    xml = await wstack.domain_xml(DOMAIN)
    targets = disk_targets(xml)
    assert targets[str(claim)] == ("cdrom", "sata")
    assert targets[str(host_disk)] == ("disk", "virtio")
    assert [v for k, v in targets.items() if "virtiocontainerdisk" in k] == [("cdrom", "sata")]
    first = boot_orders(xml)
    assert sorted(o for o in first.values() if o) == ["1"]  # only the cdrom has one
    machine = ET.fromstring(xml).find("os/type")
    assert machine is not None and "q35" in (machine.get("machine") or "")
    memory = ET.fromstring(xml).find("memory")
    assert memory is not None  # 2G as asked, which QEMU rounds up to whole MiB
    assert 0 <= int(memory.text or 0) * 1024 - 2 * 10**9 < 1 << 20

    # virtctl vnc centos7 --proxy-only: the display, through the bus.
    await vnc_frame("centos7", "--address=0.0.0.0", url=wstack.url)

    # virtctl stop centos7 (no OS answers ACPI: the grace period would be the default 180 s).
    await ok(wstack, "stop", "centos7", "--grace-period", "0", "--force")
    await ok(wstack, "wait", "vm", "centos7", "--for", "status=Stopped", "--timeout", "60")
    assert guests(wstack.base) == []
    vm = json.loads(await ok(wstack, "get", "vm", "centos7", "-o", "json"))
    assert vm["spec"]["running"] is False
    with host_disk.open("r+b") as f:  # what an installer would have left on the disk
        f.write(b"installed")

    # kubectl edit: the disk boots first, the cdrom second; applied again.
    swapped_doc = swap_boot_order(yaml.safe_load(seed))
    assert swapped_doc != yaml.safe_load(seed)  # the edit changed something
    swapped = tmp_path / "kubevirt-centos7.yaml"
    swapped.write_text(yaml.safe_dump(swapped_doc, sort_keys=False))
    out = await ok(wstack, "apply", "-f", str(swapped))
    assert out == "virtualmachine.kubevirt.io/centos7 configured\n"

    await ok(wstack, "start", "centos7")
    await ok(wstack, "wait", "vm", "centos7", "--for", "status=Running", "--timeout", "60")
    xml = await wstack.domain_xml(DOMAIN)
    targets = disk_targets(xml)
    then = boot_orders(xml)
    cdrom_dev = next(k for k, v in first.items() if v == "1")
    disk_dev = next(k for k in then if k.startswith("vd"))
    assert (then[cdrom_dev], then[disk_dev]) == ("2", "1")
    assert (first[cdrom_dev], first[disk_dev]) == ("1", None)
    assert targets[str(host_disk)] == ("disk", "virtio")
    with host_disk.open("rb") as f:
        assert f.read(9) == b"installed"  # DiskOrCreate found the disk: not made again

    # Stop and delete: the VM goes, its disks stay (KubeVirt keeps them for recovery).
    await ok(wstack, "stop", "centos7", "--grace-period", "0", "--force")
    await ok(wstack, "wait", "vm", "centos7", "--for", "status=Stopped", "--timeout", "60")
    await ok(wstack, "delete", "centos7")
    await ok(wstack, "wait", "vm", "centos7", "--for", "delete", "--timeout", "60")
    assert guests(wstack.base) == []
    assert DOMAIN not in await wstack.domains(NODE)
    assert host_disk.exists() and claim.exists()


def test_walkthrough_script_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(WALKTHROUGH)], check=False, capture_output=True,
                          text=True)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")


@contextlib.asynccontextmanager
async def virtbus_up(base: Path, *, hypervisor: str) -> AsyncIterator[tuple[str, Path]]:
    """What `make run [HYPERVISOR=qemu]` starts, with one node: `virtbus up` and its relative
    `--data-dir .virtbus`, run from `base`; yields the bus URL and that `.virtbus`."""
    log = base / "up.log"
    proc = await asyncio.create_subprocess_exec(
        str(VIRTBUS), "up", "--hypervisor", hypervisor, "--nodes", "1", "--port", "-1",
        "--data-dir", ".virtbus", cwd=base, stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("bus: "), log.read_text()
        yield line.split()[1], base / ".virtbus"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # staged: workers, their libvirtd, then the bus
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def walkthrough(url: str, data: Path) -> str:
    """examples/walkthrough.sh as a user runs it, told where the stack's admin credentials are
    (it runs from the repository, where `make run`'s would be found by themselves); its output,
    once it exited 0."""
    env = {**os.environ, "VIRTBUS_NATS_URL": url, "NODES_DIR": str(data / "nodes"),
           "VIRTBUS": str(VIRTBUS), "WAIT": "60", "VIRTBUS_CREDS": str(data / "creds/admin.creds"),
           "VIRTBUS_TLS_CA": str(data / "tls/ca.pem")}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "bash", str(WALKTHROUGH), env=env, stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 110)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the script's own children too
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    for line in (
        "node-a   Ready",
        "Uploading centos7.iso completed successfully",
        "iso-centos7   Bound    5G",
        "virtualmachine.kubevirt.io/centos7 created",
        "virtualmachine.kubevirt.io/centos7 configured",
        'virtualmachine.kubevirt.io "centos7" deleted',
        "walkthrough done",
    ):
        assert line in text, text
    return text


async def test_walkthrough_script_after_make_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On `make run`'s nodes (libvirt's test driver): every step but the display's."""
    async with virtbus_up(tmp_path_factory.mktemp("wt"), hypervisor="test") as (url, data):
        text = await walkthrough(url, data)
    assert "note: no QEMU node" in text and "skipped: the test driver's domains" in text
    # The VMI of the second start: the hard disk boots first, the cdrom second.
    assert re.search(r"bootOrder: 2\n\s*name: cdromiso", text), text
    assert re.search(r"bootOrder: 1\n\s*name: harddrive", text), text


def test_walkthrough_script_without_a_stack_says_to_start_one() -> None:
    env = {**os.environ, "VIRTBUS_NATS_URL": "nats://127.0.0.1:1", "VIRTBUS": str(VIRTBUS)}
    proc = subprocess.run(["bash", str(WALKTHROUGH)], env=env, check=False, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in proc.stderr
    assert "start the stack first, in another terminal: make run" in proc.stderr


@pytest.mark.kvm
async def test_walkthrough_script_after_make_run_on_qemu(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On `make run HYPERVISOR=qemu`'s nodes: the VNC banner and the libvirt domain too."""
    # A short base: the node's unix socket path must fit 108 bytes.
    async with virtbus_up(tmp_path_factory.mktemp("wu"), hypervisor="qemu") as (url, data):
        text = await walkthrough(url, data)
        assert guests(data) == []
    assert "VNC server says: RFB 003.00" in text, text
    # The domain of the second start: the hard disk boots first, the cdrom second.
    assert re.search(r"dev='vda' bus='virtio'/>\s*<boot order='1'/>", text), text
    assert re.search(r"dev='sda' bus='sata'/>\s*<boot order='2'/>", text), text
