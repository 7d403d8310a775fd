"""A KubeVirt VM spec in, libvirt domain XML out: read back, and accepted by a real libvirt."""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml
from paths import SEED

from events.errors import ValidationError
from workers.domain import METADATA_NS, render_domain
from workers.vmnet import bridged
from workers.volumeplan import ResolvedVolume, VolumeNeed, volume_plan

DISKS = "spec.template.spec.domain.devices.disks"


def seed() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SEED.read_text())["spec"]
    return spec


def domain_of(spec: dict[str, Any]) -> dict[str, Any]:
    domain: dict[str, Any] = spec["template"]["spec"]["domain"]
    return domain


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, ResolvedVolume]:
    """Small real files standing in for what the worker resolves for the seed's volumes."""
    paths = {}
    for name in ("cdromiso", "harddrive", "virtiocontainerdisk", "extra"):
        path = tmp_path / f"{name}.img"
        path.write_bytes(b"\0" * 4096)
        paths[name] = ResolvedVolume(path=str(path))
    return paths


def render(spec: dict[str, Any], volumes: dict[str, ResolvedVolume], **kw: Any) -> ET.Element:
    args: dict[str, Any] = {"name": "centos7", "namespace": "default", "uid": "u-1", "kvm": False}
    xml = render_domain(spec, volumes=volumes, **(args | kw))
    return ET.fromstring(xml)


def disks(root: ET.Element) -> list[ET.Element]:
    return root.findall("./devices/disk")


def target(disk: ET.Element) -> tuple[str | None, str | None]:
    el = disk.find("target")
    assert el is not None
    return el.get("dev"), el.get("bus")


def attr(el: ET.Element, path: str, key: str) -> str | None:
    """Attribute `key` of the element at `path`, which must exist."""
    found = el.find(path)
    assert found is not None, path
    return found.get(key)


def attrs(el: ET.Element, path: str) -> dict[str, str]:
    found = el.find(path)
    assert found is not None, path
    return dict(found.attrib)


def source(disk: ET.Element) -> str | None:
    el = disk.find("source")
    assert el is not None
    return el.get("file") or el.get("dev")


def with_volume(spec: dict[str, Any], disk: dict[str, Any]) -> dict[str, Any]:
    """The seed plus one more disk backed by the `extra` volume."""
    spec = copy.deepcopy(spec)
    domain_of(spec)["devices"]["disks"].append({"name": "extra", **disk})
    spec["template"]["spec"]["volumes"].append({"name": "extra", "emptyDisk": {"capacity": "1Gi"}})
    return spec


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    c = libvirt.open("test:///default")  # libvirt's built-in test driver: no daemon, real API
    yield c
    c.close()


# --- the seed manifest ---------------------------------------------------------------------------


def test_seed_renders_kubevirt_domain(sources: dict[str, ResolvedVolume]) -> None:
    root = render(seed(), sources)
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "default_centos7"
    assert root.findtext("uuid") == str(uuid.UUID(root.findtext("uuid") or ""))
    meta = root.find(f"./metadata/{{{METADATA_NS}}}vm")
    assert meta is not None and meta.attrib == {"namespace": "default", "name": "centos7",
                                                "uid": "u-1"}  # fmt: skip
    assert root.findtext("memory") == "1953125"  # 2G = 2e9 bytes = 1953125 KiB exactly
    assert attr(root, "memory", "unit") == "KiB"
    assert root.findtext("vcpu") == "1"
    os_type = root.find("./os/type")
    assert os_type is not None and os_type.text == "hvm"
    assert os_type.attrib == {"arch": "x86_64", "machine": "q35"}
    assert root.find("./features/acpi") is not None and root.find("./features/apic") is not None
    assert [root.findtext(f"on_{e}") for e in ("poweroff", "reboot", "crash")] == [
        "destroy", "restart", "destroy"
    ]  # fmt: skip

    cdrom, hd, container = disks(root)
    assert (cdrom.get("device"), target(cdrom)) == ("cdrom", ("sda", "sata"))
    assert cdrom.find("readonly") is not None
    assert attr(cdrom, "boot", "order") == "1"
    assert attr(cdrom, "source", "file") == sources["cdromiso"].path
    assert (hd.get("device"), target(hd)) == ("disk", ("vda", "virtio"))
    assert hd.find("readonly") is None and hd.find("boot") is None
    assert (container.get("device"), target(container)) == ("cdrom", ("sdb", "sata"))
    # Always one virtio-scsi controller, as in KubeVirt: hotplugged disks attach to it.
    [controller] = root.findall("./devices/controller")
    assert controller.attrib == {"type": "scsi", "index": "0", "model": "virtio-scsi"}

    [nic] = root.findall("./devices/interface")
    assert nic.get("type") == "user"
    assert attr(nic, "model", "type") == "e1000"
    assert nic.find("mac") is None

    graphics = root.find("./devices/graphics")
    assert graphics is not None and graphics.get("type") == "vnc"
    assert graphics.get("listen") == "127.0.0.1" and graphics.get("autoport") == "yes"
    assert "0.0.0.0" not in ET.tostring(root, encoding="unicode")
    assert attr(root, "./devices/serial", "type") == "pty"
    assert attr(root, "./devices/console", "type") == "pty"
    assert root.find("./devices/video/model") is not None


def test_real_libvirt_defines_starts_and_round_trips_the_seed(
    conn: libvirt.virConnect, sources: dict[str, ResolvedVolume]
) -> None:
    uid = uuid.uuid4().hex
    xml = render_domain(seed(), name="centos7", namespace=f"ns{uid[:8]}", uid=uid,
                        volumes=sources, kvm=True)  # fmt: skip
    dom = conn.defineXML(xml)
    try:
        assert dom.name() == f"ns{uid[:8]}_centos7"
        assert dom.UUIDString() == ET.fromstring(xml).findtext("uuid")
        dom.create()
        assert dom.isActive() == 1
        state, max_kib, _, vcpus, _ = dom.info()
        assert (state, max_kib, vcpus) == (libvirt.VIR_DOMAIN_RUNNING, 1953125, 1)
        back = ET.fromstring(dom.XMLDesc())
        # libvirt lists disks in its own order, so compare them by target.
        got = {target(d): (d.get("device"), source(d)) for d in disks(back)}
        assert got == {
            ("sda", "sata"): ("cdrom", sources["cdromiso"].path),
            ("vda", "virtio"): ("disk", sources["harddrive"].path),
            ("sdb", "sata"): ("cdrom", sources["virtiocontainerdisk"].path),
        }
        assert attr(back, "./devices/disk/boot", "order") == "1"
        assert attr(back, "./devices/interface/model", "type") == "e1000"
        assert attr(back, "./devices/graphics", "listen") == "127.0.0.1"
        assert attr(back, f"./metadata/{{{METADATA_NS}}}vm", "uid") == uid
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    assert f"ns{uid[:8]}_centos7" not in conn.listDefinedDomains()


def test_real_libvirt_accepts_scsi_lun_and_options(
    conn: libvirt.virConnect, sources: dict[str, ResolvedVolume]
) -> None:
    spec = with_volume(seed(), {"lun": {}, "bootOrder": 2})
    nic = domain_of(spec)["devices"]["interfaces"][0]
    nic.update(model="virtio", macAddress="02-00-00-AB-CD-EF")
    domain_of(spec)["cpu"] = {"sockets": 2, "cores": 2, "threads": 1}
    uid = uuid.uuid4().hex
    dom = conn.defineXML(
        render_domain(spec, name="lun", namespace="t", uid=uid, volumes=sources, kvm=False)
    )
    try:
        dom.create()
        back = ET.fromstring(dom.XMLDesc())
        [lun] = [d for d in disks(back) if d.get("device") == "lun"]
        assert (lun.get("type"), target(lun)) == ("block", ("sdc", "scsi"))
        assert attr(back, "./devices/controller[@type='scsi']", "model") == "virtio-scsi"
        assert attr(back, "./devices/interface/mac", "address") == "02:00:00:ab:cd:ef"
        assert dom.info()[3] == 4
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_seed_xml_validates_against_libvirt_schema(
    sources: dict[str, ResolvedVolume], tmp_path: Path
) -> None:
    tool = shutil.which("virt-xml-validate")
    if tool is None or shutil.which("xmllint") is None:  # xmllint is in libxml2-utils
        pytest.skip("virt-xml-validate (libvirt-clients) or xmllint (libxml2-utils) not installed")
    spec = with_volume(seed(), {"disk": {"bus": "scsi"}, "cache": "none", "serial": "s1"})
    for kvm in (False, True):
        path = tmp_path / f"domain-{kvm}.xml"
        path.write_text(render_domain(spec, name="v", namespace="d", uid="u", volumes=sources,
                                      kvm=kvm, emulator="/usr/bin/qemu-system-x86_64"))  # fmt: skip
        done = subprocess.run(
            [tool, str(path), "domain"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr + done.stdout


# --- single features -----------------------------------------------------------------------------


def test_cpu_topology_sets_vcpus_and_topology(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["cpu"] = {"sockets": 2, "cores": 3, "threads": 2}
    root = render(spec, sources)
    assert root.findtext("vcpu") == "12"
    topology = root.find("./cpu/topology")
    assert topology is not None
    assert topology.attrib == {"sockets": "2", "cores": "3", "threads": "2"}


def test_cpu_defaults_to_one_of_each(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    del domain_of(spec)["cpu"]
    root = render(spec, sources)
    assert root.findtext("vcpu") == "1"
    assert attrs(root, "./cpu/topology") == {"sockets": "1", "cores": "1", "threads": "1"}


def test_bad_cpu_count_names_the_field(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["cpu"] = {"cores": 0}
    with pytest.raises(ValidationError) as err:
        render(spec, sources)
    assert err.value.field == "spec.template.spec.domain.cpu.cores"


@pytest.mark.parametrize(
    ("memory", "kib"),
    [("2Gi", 2 * 1024 * 1024), ("512Mi", 512 * 1024), ("1.5Gi", 1536 * 1024),
     ("1000", 1), ("1G", 976563), (1024, 1)],
)  # fmt: skip
def test_memory_quantities_in_kib_rounded_up(
    sources: dict[str, ResolvedVolume], memory: str | int, kib: int
) -> None:
    spec = seed()
    domain_of(spec)["resources"]["requests"]["memory"] = memory
    assert render(spec, sources).findtext("memory") == str(kib)


def test_memory_guest_wins_over_requests(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["memory"] = {"guest": "1Gi"}
    root = render(spec, sources)
    assert root.findtext("memory") == "1048576"
    assert root.findtext("currentMemory") == "1048576"


def test_bad_or_missing_memory_names_the_field(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["resources"]["requests"]["memory"] = "2 gigs"
    with pytest.raises(ValidationError) as err:
        render(spec, sources)
    assert err.value.field == "spec.template.spec.domain.resources.requests.memory"
    del domain_of(spec)["resources"]
    with pytest.raises(ValidationError, match=r"memory\.guest is required"):
        render(spec, sources)


def test_machine_type_is_taken_from_the_spec(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["machine"]["type"] = "pc-q35-7.2"
    assert attr(render(spec, sources), "./os/type", "machine") == "pc-q35-7.2"
    del domain_of(spec)["machine"]
    assert attr(render(spec, sources), "./os/type", "machine") == "q35"
    domain_of(spec)["machine"] = {"type": ""}  # KubeVirt's empty type: the default
    assert attr(render(spec, sources), "./os/type", "machine") == "q35"


def test_scsi_bus_adds_one_virtio_scsi_controller(sources: dict[str, ResolvedVolume]) -> None:
    spec = with_volume(seed(), {"disk": {"bus": "scsi"}})
    domain_of(spec)["devices"]["disks"][2]["cdrom"]["bus"] = "scsi"
    root = render(spec, sources)
    # sata and scsi share the sd prefix, so names stay unique across both buses.
    assert [target(d) for d in disks(root)] == [
        ("sda", "sata"), ("vda", "virtio"), ("sdb", "scsi"), ("sdc", "scsi")
    ]  # fmt: skip
    [controller] = root.findall("./devices/controller")
    assert controller.attrib == {"type": "scsi", "index": "0", "model": "virtio-scsi"}


def test_lun_is_a_scsi_block_device(sources: dict[str, ResolvedVolume]) -> None:
    root = render(with_volume(seed(), {"lun": {}}), sources)
    lun = disks(root)[3]
    assert (lun.get("type"), lun.get("device"), target(lun)) == ("block", "lun", ("sdc", "scsi"))
    assert attrs(lun, "source") == {"dev": sources["extra"].path}
    assert root.find("./devices/controller[@model='virtio-scsi']") is not None
    with pytest.raises(ValidationError) as err:
        render(with_volume(seed(), {"lun": {"bus": "sata"}}), sources)
    assert err.value.field == f"{DISKS}[3].lun.bus"


def test_cdrom_on_virtio_is_refused(sources: dict[str, ResolvedVolume]) -> None:
    with pytest.raises(ValidationError) as err:
        render(with_volume(seed(), {"cdrom": {"bus": "virtio"}}), sources)
    assert err.value.field == f"{DISKS}[3].cdrom.bus"


def test_missing_resolved_volume_names_the_disk(sources: dict[str, ResolvedVolume]) -> None:
    del sources["harddrive"]
    with pytest.raises(ValidationError, match="'harddrive'") as err:
        render(seed(), sources)
    assert err.value.field == f"{DISKS}[1]"


def test_disk_without_a_volume_names_the_disk(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["devices"]["disks"][0]["name"] = "nowhere"
    with pytest.raises(ValidationError) as err:
        render(spec, sources | {"nowhere": sources["extra"]})
    assert err.value.field == f"{DISKS}[0].name"


def test_boot_order_on_a_second_disk(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["devices"]["disks"][1]["bootOrder"] = 2
    orders = [d.find("boot") for d in disks(render(spec, sources))]
    assert [o.get("order") if o is not None else None for o in orders] == ["1", "2", None]
    domain_of(spec)["devices"]["disks"][1]["bootOrder"] = 0
    with pytest.raises(ValidationError) as err:
        render(spec, sources)
    assert err.value.field == f"{DISKS}[1].bootOrder"


def test_resolved_volume_format_and_readonly(sources: dict[str, ResolvedVolume]) -> None:
    qcow = ResolvedVolume(path="/images/hd.qcow2", format="qcow2", readonly=True)
    hd = disks(render(seed(), sources | {"harddrive": qcow}))[1]
    assert attrs(hd, "driver") == {"name": "qemu", "type": "qcow2"}
    assert hd.find("readonly") is not None


def test_mac_address_and_models(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    nic = domain_of(spec)["devices"]["interfaces"][0]
    nic.update(macAddress="DE:AD:BE:EF:00:01", model="virtio", bootOrder=3)
    [el] = render(spec, sources).findall("./devices/interface")
    assert attr(el, "mac", "address") == "de:ad:be:ef:00:01"
    assert attr(el, "model", "type") == "virtio"
    assert attr(el, "boot", "order") == "3"
    del nic["model"], nic["macAddress"]
    [el] = render(spec, sources).findall("./devices/interface")
    assert attr(el, "model", "type") == "virtio"  # KubeVirt's default
    assert el.find("mac") is None  # libvirt picks one


def test_a_masquerade_or_bridge_nic_on_the_vm_network_is_the_nodes_tap(
    sources: dict[str, ResolvedVolume],
) -> None:
    spec = seed()  # its NIC: masquerade, e1000
    [el] = render(spec, sources, tap="vbt-1234", mac="52:54:0a:f4:00:02").findall(
        "./devices/interface")  # fmt: skip
    assert el.get("type") == "ethernet"
    assert attrs(el, "target") == {"dev": "vbt-1234", "managed": "no"}  # QEMU only opens it
    assert attr(el, "mac", "address") == "52:54:0a:f4:00:02"  # the allocation's
    assert attr(el, "model", "type") == "e1000"
    domain_of(spec)["devices"]["interfaces"][0]["macAddress"] = "02:00:00:00:00:09"
    [el] = render(spec, sources, tap="vbt-1234", mac="52:54:0a:f4:00:02").findall(
        "./devices/interface")  # fmt: skip
    assert attr(el, "mac", "address") == "02:00:00:00:00:09"  # the spec's wins, as in KubeVirt
    nic = domain_of(spec)["devices"]["interfaces"][0]
    del nic["masquerade"]
    nic["bridge"] = {}  # bridge: the node's tap too (the guest gets the VMI address itself)
    [el] = render(spec, sources, tap="vbt-1234").findall("./devices/interface")
    assert el.get("type") == "ethernet" and attr(el, "target", "dev") == "vbt-1234"
    assert bridged(spec)
    del nic["bridge"]
    nic["slirp"] = {}  # slirp: QEMU's user networking still
    [el] = render(spec, sources, tap="vbt-1234").findall("./devices/interface")
    assert el.get("type") == "user" and el.find("target") is None
    assert not bridged(spec)
    del nic["slirp"]  # no binding written: bridge, KubeVirt's default
    assert bridged(spec)


@pytest.mark.parametrize("mac", ["01:00:00:00:00:01", "de:ad:be:ef:00", "nope"])
def test_bad_mac_address_names_the_field(sources: dict[str, ResolvedVolume], mac: str) -> None:
    spec = seed()
    domain_of(spec)["devices"]["interfaces"][0]["macAddress"] = mac
    with pytest.raises(ValidationError) as err:
        render(spec, sources)
    assert err.value.field == "spec.template.spec.domain.devices.interfaces[0].macAddress"


def test_bridge_is_user_networking_and_sriov_is_refused(
    sources: dict[str, ResolvedVolume],
) -> None:
    spec = seed()
    nic = domain_of(spec)["devices"]["interfaces"][0]
    del nic["masquerade"]
    nic["bridge"] = {}
    assert attr(render(spec, sources), "./devices/interface", "type") == "user"
    del nic["bridge"]
    nic["sriov"] = {}
    with pytest.raises(ValidationError) as err:
        render(spec, sources)
    assert err.value.field == "spec.template.spec.domain.devices.interfaces[0].sriov"


def test_tcg_or_kvm_domain_type_and_emulator(sources: dict[str, ResolvedVolume]) -> None:
    assert render(seed(), sources, kvm=False).get("type") == "qemu"
    root = render(seed(), sources, kvm=True, emulator="/usr/bin/qemu-system-x86_64")
    assert root.get("type") == "kvm"
    assert root.findtext("./devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert render(seed(), sources).find("./devices/emulator") is None


def test_uuid_is_stable_per_uid(sources: dict[str, ResolvedVolume]) -> None:
    one, again = render(seed(), sources, uid="a"), render(seed(), sources, uid="a")
    other = render(seed(), sources, uid="b")
    assert one.findtext("uuid") == again.findtext("uuid") != other.findtext("uuid")


def test_opting_out_of_console_and_graphics(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["devices"].update(autoattachSerialConsole=False, autoattachGraphicsDevice=False)
    root = render(spec, sources)
    assert root.find("./devices/serial") is None and root.find("./devices/graphics") is None
    assert root.find("./devices/video") is None


# --- volume plan ---------------------------------------------------------------------------------


def test_volume_plan_for_the_seed() -> None:
    assert volume_plan(seed()) == [
        VolumeNeed(name="cdromiso", type="persistentVolumeClaim", claim_name="iso-centos7"),
        VolumeNeed(name="harddrive", type="hostDisk", path="/data/disk.img",
                   disk_type="DiskOrCreate", capacity=30 * 2**30),
        VolumeNeed(name="virtiocontainerdisk", type="containerDisk",
                   image="kubevirt/virtio-container-disk"),
    ]  # fmt: skip


def test_volume_plan_for_cloud_init_and_empty_disk() -> None:
    spec = seed()
    net = "version: 2\n"
    spec["template"]["spec"]["volumes"] = [
        {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n",
                                            "networkDataBase64": base64.b64encode(net.encode())
                                            .decode()}},
        {"name": "scratch", "emptyDisk": {"capacity": "2G"}},
        {"name": "data", "dataVolume": {"name": "dv"}},  # CDI's claim of the DataVolume's name
    ]  # fmt: skip
    assert volume_plan(spec) == [
        VolumeNeed(name="ci", type="cloudInitNoCloud", user_data="#cloud-config\n",
                   network_data=net),
        VolumeNeed(name="scratch", type="emptyDisk", capacity=2 * 10**9),
        VolumeNeed(name="data", type="persistentVolumeClaim", claim_name="dv"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("volume", "field"),
    [({"configMap": {"name": "c"}}, "volumes[0]"),
     ({"dataVolume": {}}, "volumes[0].dataVolume.name"),
     ({}, "volumes[0]"),
     ({"emptyDisk": {}}, "volumes[0].emptyDisk.capacity"),
     ({"containerDisk": {}}, "volumes[0].containerDisk.image"),
     ({"hostDisk": {"path": "/d", "type": "DiskOrCreate"}}, "volumes[0].hostDisk.capacity"),
     ({"cloudInitNoCloud": {"secretRef": {"name": "s"}}}, "volumes[0].cloudInitNoCloud.secretRef"),
     ({"cloudInitNoCloud": {"userDataBase64": "!"}}, "volumes[0].cloudInitNoCloud.userDataBase64")],
)  # fmt: skip
def test_volume_plan_refuses_what_it_cannot_provide(volume: dict[str, Any], field: str) -> None:
    spec = seed()
    spec["template"]["spec"]["volumes"] = [{"name": "v", **volume}]
    with pytest.raises(ValidationError) as err:
        volume_plan(spec)
    assert err.value.field == f"spec.template.spec.{field}"
    if field == "volumes[0]" and volume:
        assert "'v'" in err.value.message and "dataVolume" in err.value.message


def test_bios_use_serial_puts_the_firmware_on_the_serial_console(
    sources: dict[str, ResolvedVolume],
) -> None:
    spec = seed()
    assert render(spec, sources).find("./os/bios") is None
    domain_of(spec)["firmware"] = {"bootloader": {"bios": {"useSerial": True}}}
    assert attr(render(spec, sources), "./os/bios", "useserial") == "yes"
    domain_of(spec)["firmware"] = {"bootloader": "bios"}
    with pytest.raises(ValidationError, match=r"firmware\.bootloader: expected a mapping"):
        render(spec, sources)


def test_panic_devices_become_pvpanic(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["devices"]["panicDevices"] = [{"model": "isa"}]
    assert [p.attrib for p in render(spec, sources).findall("./devices/panic")] == [
        {"model": "isa"}
    ]
    assert render(seed(), sources).findall("./devices/panic") == []  # only when asked for


def test_an_unsupported_panic_model_names_the_field(sources: dict[str, ResolvedVolume]) -> None:
    spec = seed()
    domain_of(spec)["devices"]["panicDevices"] = [{"model": "hyperv"}]
    with pytest.raises(ValidationError) as err:
        render(spec, sources)
    assert err.value.field == "spec.template.spec.domain.devices.panicDevices[0].model"
