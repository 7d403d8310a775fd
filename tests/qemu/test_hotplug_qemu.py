"""Disk hotplug end to end on real QEMU/KVM: `virtbus addvolume` and `removevolume` on a running VM.

The one-node stack of `qemustack.py` (a fresh nats-server, an in-process orchestrator, a
`QemuNode` and an in-process `Worker`); the verbs run as the CLI a user types, in a subprocess.
What the guest got is read through a libvirt connection of our own to the node, never through
the worker. Skipped only where root, /dev/kvm or QEMU/libvirt are missing.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest
from qemustack import QemuStack, apply, qemu_stack, seed_doc, short_grace
from test_worker_qemu import NODE

from bus.client import send
from events import commands as c
from events import model as m

pytestmark = pytest.mark.kvm

NODE_INDEX = 8  # its own port range, away from test_worker_qemu's node 7


@pytest.fixture
async def hstack(
    kvm_host: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QemuStack]:
    async with qemu_stack(tmp_path_factory.mktemp("hq"), nodes={NODE: NODE_INDEX}) as st:
        yield st


def scsi_disks(domain_xml: str) -> dict[str, tuple[str, str]]:
    """Source file -> (target dev, serial) of the domain's disks on the scsi bus."""
    out = {}
    for disk in ET.fromstring(domain_xml).findall("./devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None and target.get("bus") == "scsi":
            out[source.get("file") or source.get("dev") or ""] = (
                target.get("dev") or "",
                disk.findtext("serial") or "",
            )
    return out


async def test_addvolume_and_removevolume_on_a_running_qemu_vm(hstack: QemuStack) -> None:
    hstack.provide_seed_volumes()
    pvc = hstack.provide_claim("data")
    await send(hstack.nc, apply(short_grace(seed_doc("hot"))))
    await send(hstack.nc, c.StartVM(name="hot"))
    await hstack.until("hot", "Running")
    before = await hstack.domain_xml("default_hot")
    assert str(pvc) not in before
    # Always there, so a hotplugged disk has a controller to land on.
    assert ET.fromstring(before).find("./devices/controller[@model='virtio-scsi']") is not None

    seen = len(await hstack.events("hot"))
    t0 = time.monotonic()
    code, out, err = await hstack.virtbus("addvolume", "hot", "--volume-name", "data",
                                          "--serial", "DATA1")  # fmt: skip
    assert (code, err) == (0, "")
    assert out.strip() == "Successfully submitted add volume request to VM hot for volume data"
    after = await hstack.until_event("hot", m.VolumeAttached, after=seen)
    print(f"addvolume -> VolumeAttached: {time.monotonic() - t0:.2f}s")
    assert [type(e).__name__ for e in after] == ["VolumeAttachRequested", "VolumeAttached"]
    assert (await hstack.state("hot")).volumes == {"data": "Ready"}
    xml = await hstack.domain_xml("default_hot")
    dev, serial = scsi_disks(xml)[str(pvc)]
    print(f"hotplugged {pvc} as {dev}")
    assert dev.startswith("sd") and serial == "DATA1"
    assert dev not in {t for p, (t, _) in scsi_disks(before).items()}

    seen += len(after)
    code, out, err = await hstack.virtbus("removevolume", "hot", "--volume-name", "data")
    assert (code, err) == (0, "")
    assert out.strip() == "Successfully submitted remove volume request to VM hot for volume data"
    after = await hstack.until_event("hot", m.VolumeDetached, after=seen)
    assert [type(e).__name__ for e in after] == ["VolumeDetachRequested", "VolumeDetached"]
    assert (await hstack.state("hot")).volumes == {}
    assert str(pvc) not in await hstack.domain_xml("default_hot")

    code, _, err = await hstack.virtbus("removevolume", "hot", "--volume-name", "data")
    assert code == 1 and 'volume "data" not found' in err
    assert (await hstack.state("hot")).status == "Running"  # the guest ran on throughout


async def test_addvolume_of_a_missing_claim_fails_naming_it(hstack: QemuStack) -> None:
    hstack.provide_seed_volumes()
    await send(hstack.nc, apply(short_grace(seed_doc("nodisk"))))
    await send(hstack.nc, c.StartVM(name="nodisk"))
    await hstack.until("nodisk", "Running")
    seen = len(await hstack.events("nodisk"))
    code, _, err = await hstack.virtbus("addvolume", "nodisk", "--volume-name", "gone")
    assert (code, err) == (0, "")  # accepted: only the node can tell the claim is missing
    after = await hstack.until_event("nodisk", m.VolumeAttachFailed, after=seen)
    [failed] = [e for e in after if isinstance(e, m.VolumeAttachFailed)]
    print(f"reason: {failed.reason}")
    assert (failed.volume, failed.node) == ("gone", NODE)
    assert 'persistentvolumeclaim "gone" not found' in failed.reason
    s = await hstack.state("nodisk")
    assert s.volumes == {"gone": "Failed"} and s.hotplug["gone"].reason == failed.reason
    assert s.status == "Running"
    assert "gone" not in await hstack.domain_xml("default_nodisk")
