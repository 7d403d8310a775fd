"""The tiny Linux guest on real QEMU nodes: it boots, applies its cloud-init seed, and its own
lifecycle (ACPI shutdown honoured or ignored, poweroff, reboot, kernel panic) is recorded with
its cause.

The guest is built here from Debian packages (`virtbus/guest/build.py`, cached by content), pushed
to a real registry on loopback as the container disk `examples/vm-tiny-linux.yaml` names, and
pulled by the node like any other. Everything inside the guest is read and typed through `virtbus
console` (the serial console over the bus). On a host whose KVM is PVM the node runs the guest on
TCG (`workers/accel.py`, `accelerator`): slower, but a stock kernel boots there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemustack import QemuStack, apply, qemu_stack
from registry import available, push_disk, registry_server
from upstack import named, virtbus_up

from bus.client import send
from events import commands as c
from events import model as m
from events.manifest import parse_documents
from events.state import conditions
from virtbus.guestdisk import IMAGE
from workers.screens import PNG_MAGIC
from workers.vmnet import names

pytestmark = pytest.mark.kvm

NODE, NODE_INDEX = "node-g", 24  # its own VNC/migration port range
EXAMPLE = Path(__file__).parents[2] / "examples" / "vm-tiny-linux.yaml"
VIRTBUS = Path(sys.executable).parent / "virtbus"
BOOT_S = 120  # a boot on TCG (PVM hosts) under a loaded 2-core machine


@pytest.fixture
async def gstack(
    kvm_host: None, guest_disk: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[QemuStack]:  # fmt: skip
    assert available(), "docker-registry is missing: run `make setup`"
    base = tmp_path_factory.mktemp("gq")  # short: the node's unix socket path must fit 108 bytes
    with registry_server(base / "registry") as reg:
        push_disk(reg.url, IMAGE, guest_disk)
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        async with qemu_stack(base, nodes={NODE: NODE_INDEX}, vm_network=True) as st:
            yield st


# No hostname here: the guest takes the VM's name from the NoCloud meta-data (local-hostname).
PLAIN = "#cloud-config\nruncmd:\n- echo ok > /run/ok\n"


def tiny(
    name: str, *, strategy: str = "Halted", grace: int = 30, user_data: str = PLAIN,
    claim: str = "", binding: str = "masquerade",
) -> Any:  # fmt: skip
    """The example's VM under `name`, with its run strategy, grace period, user data and NIC
    binding (and a third virtio disk, the persistent volume claim `claim`)."""
    doc = parse_documents(EXAMPLE.read_text())[0]
    doc["metadata"]["name"] = name
    doc["spec"]["runStrategy"] = strategy
    spec = doc["spec"]["template"]["spec"]
    spec["terminationGracePeriodSeconds"] = grace
    spec["volumes"][1]["cloudInitNoCloud"]["userData"] = user_data
    spec["domain"]["devices"]["interfaces"] = [{"name": "default", binding: {}}]
    if claim:
        spec["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "virtio"}})
        spec["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    return apply(doc)


class Console:
    """`virtbus console NAME` as a user runs it: what the guest writes, and typing into it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc, self.out, self.into = proc, proc.stdout, proc.stdin
        self.seen = b""

    async def type(self, text: str) -> None:
        self.into.write(text.encode())
        await self.into.drain()

    async def expect(self, needle: bytes, *, within: float, nudge: str = "") -> bytes:
        """Read until `needle`; `nudge` is typed again each time the guest falls silent (a login
        prompt is printed anew on each Enter)."""
        try:
            async with asyncio.timeout(within):
                while needle not in self.seen:
                    try:
                        chunk = await asyncio.wait_for(self.out.read(4096), 3 if nudge else None)
                    except TimeoutError:
                        await self.type(nudge)
                        continue
                    if not chunk:
                        pytest.fail(f"console closed before {needle!r}: {self.seen[-800:]!r}")
                    self.seen += chunk
        except TimeoutError:
            pytest.fail(f"no {needle!r} within {within}s: {self.seen[-800:]!r}")
        head, _, self.seen = self.seen.partition(needle)
        return head + needle


@contextlib.asynccontextmanager
async def console(
    st: QemuStack | str, name: str, *, env: dict[str, str] | None = None
) -> AsyncIterator[Console]:
    """`virtbus console NAME` against the stack `st` (or a bus URL, with the environment that
    logs in to it)."""
    proc = await asyncio.create_subprocess_exec(
        str(VIRTBUS), "console", name,
        "--server", st if isinstance(st, str) else st.url, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        yield Console(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def booted(st: QemuStack, name: str, *, hostname: str) -> None:
    """The VM is Running and its guest shows a login prompt with `hostname` on the console."""
    await st.until(name, "Running", within=BOOT_S)
    async with console(st, name) as con:
        await con.expect(f"{hostname} login: ".encode(), within=BOOT_S, nudge="\r")


async def root_shell(con: Console, *, hostname: str) -> None:
    await con.expect(f"{hostname} login: ".encode(), within=BOOT_S, nudge="\r")
    await con.type("root\r")
    # (an Enter after 3 s of silence prints the prompt anew: under load the serial console
    # here now and then loses a byte, the prompt's space among them)
    await con.expect(b"# ", within=30, nudge="\r")


async def ssh_key(where: Path) -> tuple[Path, str]:
    """A new ed25519 key pair in `where`: the private key's path, the public key's line."""
    key = where / "id_ed25519"
    keygen = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await keygen.wait() == 0
    return key, (where / "id_ed25519.pub").read_text().strip()


async def udp_echo(where: Path) -> str:
    """A runcmd line that starts a UDP echo on the guest's port 7 (tests/support/udpecho.c,
    built here: busybox has no UDP server), the binary carried base64'd in the line itself."""
    binary = where / "udpecho"
    cc = await asyncio.create_subprocess_exec(
        "gcc", "-static", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector",
        "-Os", "-s", "-Wl,--build-id=none", "-Wl,-n", "-Wl,--no-warn-rwx-segments",
        "-o", str(binary), str(Path(__file__).parents[1] / "support" / "udpecho.c"),
    )  # fmt: skip
    assert await cc.wait() == 0
    code = base64.b64encode(binary.read_bytes()).decode()
    return f"echo {code} | base64 -d > /run/udpecho; chmod +x /run/udpecho; /run/udpecho &"


async def udp_through_port_forward(st: QemuStack, name: str) -> list[bytes]:
    """`virtbus port-forward vm/NAME udp/0:7`: two local peers' datagrams, each answered by the
    guest's echo and sent back to the peer that asked (a session each, as virtctl has it)."""
    proc = await asyncio.create_subprocess_exec(
        str(VIRTBUS), "port-forward", f"vm/{name}", "udp/0:7", "--server", st.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.fullmatch(r"Forwarding from 127\.0\.0\.1:([0-9]+) -> 7 \(udp\)\n", line)
        assert found, line
        answers = []
        for peer, text in zip(peers * 2, (b"one", b"two", b"three", b"four"), strict=True):
            peer.setblocking(False)
            peer.sendto(text, ("127.0.0.1", int(found.group(1))))
            answers.append(await asyncio.wait_for(loop.sock_recv(peer, 65536), 60))
        return answers
    finally:
        for peer in peers:
            peer.close()
        proc.kill()
        await proc.communicate()


async def test_tiny_guest_boots_to_a_login_with_its_cloud_init_applied(
    gstack: QemuStack, tmp_path: Path
) -> None:
    key, public = await ssh_key(tmp_path)
    user_data = (
        "#cloud-config\nhostname: guest-one\nruncmd:\n- echo ran-by-cloud-init > /run/marker\n"
        f"- {await udp_echo(tmp_path)}\nssh_authorized_keys:\n- {public}\n"
    )
    await send(gstack.nc, tiny("tiny-linux", user_data=user_data))
    await send(gstack.nc, c.StartVM(name="tiny-linux"))
    s = await gstack.until("tiny-linux", "Running", within=BOOT_S)
    pulled = [e for e in await gstack.events("tiny-linux") if isinstance(e, m.ImagePulled)]
    assert [p.image for p in pulled] == [IMAGE]
    async with console(gstack, "tiny-linux") as con:
        await root_shell(con, hostname="guest-one")  # cloud-init's hostname, in the prompt
        await con.type("cat /run/marker; hostname\r")
        await con.expect(b"ran-by-cloud-init\r\nguest-one\r\n", within=30)
        # Masquerade as KubeVirt does it: the guest has 10.0.2.2/24 by DHCP, gateway 10.0.2.1.
        await con.type("ip -4 -o addr show eth0 | cut -d' ' -f7; ip route | grep def'ault'\r")
        await con.expect(b"10.0.2.2/24\r\ndefault via 10.0.2.1 dev eth0", within=30)
    # The guest agent answers on its channel: KubeVirt's AgentConnected condition.
    events = await gstack.until_event("tiny-linux", m.GuestAgentChanged, within=BOOT_S)
    assert [e.connected for e in events if isinstance(e, m.GuestAgentChanged)] == [True]
    assert {"type": "AgentConnected", "status": "True"} in conditions(
        await gstack.state("tiny-linux")
    )
    # virtctl's guest-agent verbs, answered by the agent through the node.
    code, out, err = await gstack.virtbus("guestosinfo", "tiny-linux")
    assert code == 0, err
    info = json.loads(out)
    assert (info["hostname"], info["os"]["machine"], info["timezone"]) == (
        "guest-one", "x86_64", "UTC, 0")  # fmt: skip
    assert info["guestAgentVersion"].startswith("7.2.")  # Debian 12's qemu-guest-agent
    assert [u["userName"] for u in info["userList"]] == ["root"]  # the console's login above
    code, out, err = await gstack.virtbus("userlist", "tiny-linux")
    assert code == 0, err
    assert [u["userName"] for u in json.loads(out)["items"]] == ["root"]
    code, out, err = await gstack.virtbus("fslist", "tiny-linux")
    assert code == 0, err
    assert json.loads(out) == {"metadata": {}, "items": []}  # it runs from its initramfs
    # The VMI address is real: the host reaches the guest's sshd there, ports forwarded inward.
    assert ipaddress.IPv4Address(s.ip) in ipaddress.IPv4Network("10.244.0.0/16")
    assert await ssh_banner(s.ip) == b"SSH-2.0-dropbear_2022.83"  # Debian 12's dropbear-bin
    # `virtbus ssh` logs in with the key cloud-init installed, through port-forward --stdio.
    ssh = await asyncio.create_subprocess_exec(
        str(VIRTBUS), "ssh", "tiny@vm/tiny-linux", "-i", str(key), "--server", gstack.url,
        "--known-hosts", str(tmp_path / "known_hosts"), "-c", "cat /run/marker; id -un",
        "-t", "-oBatchMode=yes", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(ssh.communicate(), 120)
    assert (ssh.returncode, out) == (0, b"ran-by-cloud-init\ntiny\n"), err
    # UDP through `port-forward udp/...`, one datagram a frame, answered by the guest.
    assert await udp_through_port_forward(gstack, "tiny-linux") == [
        b"guest:one", b"guest:two", b"guest:three", b"guest:four"]  # fmt: skip
    # Everything the node made for the VM goes with it. Its DHCP server (dnsmasq) is the
    # node's own child, not a daemon left to PID 1: reaped once stopped, no zombie left.
    netns = names("default_tiny-linux", node=NODE)[0]
    assert netns in (await ip_netns())
    dhcp = [p for p in (await ip_netns("pids", netns)).split() if comm(p) == "dnsmasq"]
    assert len(dhcp) == 1 and parent(dhcp[0]) == os.getpid()  # the worker runs in this process
    await send(gstack.nc, c.StopVM(name="tiny-linux"))
    await gstack.until("tiny-linux", "Stopped", within=120)
    assert netns not in (await ip_netns())
    assert not alive(dhcp[0])


async def test_a_live_migration_keeps_the_address_and_moves_the_vm_network(
    kvm_host: None, guest_disk: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    base = tmp_path_factory.mktemp("gm")
    nodes = {"node-m": 26, "node-n": 27}  # port ranges of their own
    with registry_server(base / "registry") as reg:
        push_disk(reg.url, IMAGE, guest_disk)
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        async with qemu_stack(base, nodes=nodes, vm_network=True) as st:
            await send(st.nc, tiny("mover", strategy="Always"))  # runs once applied
            await booted(st, "mover", hostname="mover")
            await agent_back(st, "mover", after=0)
            s = await st.state("mover")
            source, target = s.node, next(n for n in nodes if n != s.node)
            assert await ssh_banner(s.ip) == b"SSH-2.0-dropbear_2022.83"  # Debian 12's dropbear-bin
            await send(st.nc, c.MigrateVM(name="mover", target_node=target))
            await st.until_event("mover", m.MigrationSucceeded, within=BOOT_S)
            after = await st.state("mover")
            assert (after.node, after.ip, after.vmi_uid) == (target, s.ip, s.vmi_uid)
            # KubeVirt's AgentConnected holds on the target, whose agent connected before the
            # VM was the target's (recorded then, kept for the migration's success).
            await agent_on(st, "mover", node=target)
            # The guest's sshd at the same address, now through the target's namespace.
            assert await ssh_banner(s.ip) == b"SSH-2.0-dropbear_2022.83"  # Debian 12's dropbear-bin
            dom = "default_mover"
            there = await ip_netns()
            assert names(dom, node=target)[0] in there
            assert names(dom, node=source)[0] not in there
            await send(st.nc, c.StopVM(name="mover"))
            await st.until("mover", "Stopped", within=120)
            assert names(dom, node=target)[0] not in (await ip_netns())


async def ssh_banner(ip: str, *, within: float = 60) -> bytes:
    """The first line the VMI address's port 22 sends. Retried: the node's route switch after a
    migration is no event to wait on."""
    async with asyncio.timeout(within):
        while True:
            try:
                reader, writer = await asyncio.open_connection(ip, 22)
                line = await asyncio.wait_for(reader.readline(), 10)
                writer.close()
                if line:
                    return line.strip()
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.5)


async def ip_netns(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec("ip", "netns", *(args or ("list",)),
                                                stdout=asyncio.subprocess.PIPE)  # fmt: skip
    return (await proc.communicate())[0].decode()


def comm(pid: str) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def alive(pid: str) -> bool:
    """Whether `pid` is a process, a zombie included."""
    return Path(f"/proc/{pid}").exists()


def parent(pid: str) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@contextlib.asynccontextmanager
async def logged_in(st: QemuStack, name: str) -> AsyncIterator[Console]:
    """A root shell on the console of the VM `name`, once it runs."""
    await st.until(name, "Running", within=BOOT_S)
    async with console(st, name) as con:
        await root_shell(con, hostname=name)  # the VM's name, from the meta-data
        yield con


def stops(events: list[m.Event]) -> list[tuple[str, str]]:
    return [(e.reason, e.detail) for e in events if isinstance(e, m.DomainStopped)]


async def test_stop_sends_acpi_and_the_guest_shuts_down_within_its_grace(gstack: QemuStack) -> None:
    await send(gstack.nc, tiny("polite", grace=120))
    await send(gstack.nc, c.StartVM(name="polite"))
    await booted(gstack, "polite", hostname="polite")
    await send(gstack.nc, c.StopVM(name="polite"))
    await gstack.until("polite", "Stopped", within=120)
    events = await gstack.events("polite")
    assert stops(events) == [("shutdown", "")]  # the guest's own ACPI shutdown, not a destroy
    assert [e.reason for e in events if isinstance(e, m.VMStopped)] == ["stopped"]


async def test_a_guest_ignoring_acpi_is_destroyed_after_its_grace(gstack: QemuStack) -> None:
    await send(gstack.nc, tiny("deaf", grace=3))
    await send(gstack.nc, c.StartVM(name="deaf"))
    async with logged_in(gstack, "deaf") as con:
        # The power button goes unheard. (The quotes keep the echoed command line from matching.)
        await con.type("killall acpid; while pidof acpid; do :; done; echo acpid'-'gone\r")
        await con.expect(b"\nacpid-gone\r\n", within=30)
    await send(gstack.nc, c.StopVM(name="deaf"))
    await gstack.until("deaf", "Stopped", within=60)
    assert stops(await gstack.events("deaf")) == [("destroyed", "")]


@pytest.mark.parametrize(
    ("strategy", "told"),
    [("Manual", "guest shut down"), ("Always", "guest shut down; restarting (runStrategy Always)")],
)
async def test_a_guest_powering_itself_off(gstack: QemuStack, strategy: str, told: str) -> None:
    await send(gstack.nc, tiny("selfoff", strategy=strategy))
    if strategy == "Manual":  # an Always VM runs once applied
        await send(gstack.nc, c.StartVM(name="selfoff"))
    async with logged_in(gstack, "selfoff") as con:
        before = len(await gstack.events("selfoff"))
        await con.type("poweroff\r")
        events = await gstack.until_event("selfoff", m.VMStopped, after=before, within=60)
    assert stops(events) == [("shutdown", "")]
    assert [e.reason for e in events if isinstance(e, m.VMStopped)] == [told]
    if strategy == "Always":  # started again, like KubeVirt, and boots again
        await booted(gstack, "selfoff", hostname="selfoff")
        starts = [e for e in await gstack.events("selfoff") if isinstance(e, m.DomainStarted)]
        assert len(starts) == 2
    else:
        assert (await gstack.state("selfoff")).status == "Stopped"


async def test_a_guest_reboot_is_a_reboot_not_a_stop_and_reset_resets(
    gstack: QemuStack, tmp_path: Path
) -> None:
    await send(gstack.nc, tiny("rebooter"))
    await send(gstack.nc, c.StartVM(name="rebooter"))
    async with logged_in(gstack, "rebooter") as con:
        before = len(await gstack.events("rebooter"))
        await con.type("reboot\r")
        events = await gstack.until_event("rebooter", m.DomainRebooted, after=before, within=60)
        await con.expect(b"rebooter login: ", within=BOOT_S, nudge="\r")  # booted again
    # `virtbus soft-reboot`: the same reboot, asked of the guest agent once it is back.
    await agent_back(gstack, "rebooter", after=before)
    asked = len(await gstack.events("rebooter"))
    code, out, err = await gstack.virtbus("soft-reboot", "rebooter")
    assert (code, out) == (0, "VMI rebooter was scheduled to soft reboot\n"), err
    await gstack.until_event("rebooter", m.DomainRebooted, after=asked, within=60)
    # Without an agent, KubeVirt's fallback: the node presses the ACPI button, and libvirt turns
    # the guest's power-off into a reset (its "fake reboot").
    await agent_back(gstack, "rebooter", after=asked)
    async with console(gstack, "rebooter") as con:
        await root_shell(con, hostname="rebooter")
        gone = len(await gstack.events("rebooter"))
        await con.type("killall qemu-ga\r")
        await gstack.until_event("rebooter", m.GuestAgentChanged, after=gone, within=60)
    assert not (await gstack.state("rebooter")).agent_connected
    acpi = len(await gstack.events("rebooter"))
    code, out, err = await gstack.virtbus("soft-reboot", "rebooter")
    assert (code, out) == (0, "VMI rebooter was scheduled to soft reboot\n"), err
    await gstack.until_event("rebooter", m.DomainRebooted, after=acpi, within=BOOT_S)
    await booted(gstack, "rebooter", hostname="rebooter")
    events = (await gstack.events("rebooter"))[before:]
    # Three reboots and no stop; the guest agent going and coming back with each is the agent's.
    lifecycle = [type(e).__name__ for e in events if not isinstance(e, m.GuestAgentChanged)]
    assert lifecycle == ["DomainRebooted", "VMSoftRebootRequested", "SoftRebootSent",
                         "DomainRebooted", "VMSoftRebootRequested", "SoftRebootSent",
                         "DomainRebooted"]  # fmt: skip
    sent = [(e.method, e.error) for e in events if isinstance(e, m.SoftRebootSent)]
    assert sent == [("agent", ""), ("acpi", "")]
    assert (await gstack.state("rebooter")).status == "Running"
    # `history` says who asked for each soft reboot: the command, with its actor.
    code, out, err = await gstack.virtbus("history", "rebooter", "-o", "json")
    assert code == 0, err
    asked_by = [i["summary"] for i in json.loads(out)["items"]
                if (i["category"], i["type"]) == ("Command", "SoftRebootVM")]  # fmt: skip
    assert asked_by == ["SoftRebootVM: accepted -> VMSoftRebootRequested"] * 2

    # `virtbus reset`: the reset button (virDomainReset): recorded once, by the node, with the
    # request it carried out (libvirt's own REBOOT event for it is no second record); the guest
    # boots again, the same instance. Then `vnc screenshot`: QEMU's PPM screen as a PNG.
    await agent_back(gstack, "rebooter", after=asked)
    reset_at = len(await gstack.events("rebooter"))
    async with logged_in(gstack, "rebooter") as con:
        code, out, err = await gstack.virtbus("reset", "vmi", "rebooter")
        assert (code, out) == (0, "VMI rebooter was scheduled to reset\n"), err
        await gstack.until_event("rebooter", m.DomainRebooted, after=reset_at, within=60)
        await con.expect(b"rebooter login: ", within=BOOT_S, nudge="\r")  # booted again
    events = (await gstack.events("rebooter"))[reset_at:]
    told = [e for e in events if isinstance(e, m.VMResetRequested | m.DomainRebooted)]
    s = await gstack.state("rebooter")
    assert told == [m.VMResetRequested(vmi_uid=s.vmi_uid),
                    m.DomainRebooted(node=s.node, reset=s.reset_asked)]  # fmt: skip
    code, out, err = await gstack.virtbus("vnc", "screenshot", "rebooter", "-f",
                                          str(tmp_path / "screen.png"))  # fmt: skip
    assert (code, out) == (0, ""), err
    png = (tmp_path / "screen.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    (idat_len,) = struct.unpack(">I", png[33:37])
    rows = zlib.decompress(png[41 : 41 + idat_len])  # the encoder's one IDAT: every pixel
    assert (png[:8], png[37:41], len(rows)) == (PNG_MAGIC, b"IDAT", height * (1 + 3 * width))

    # `expose` and kubectl's `port-forward svc/NAME PORT`: the Service's port 2222 is the guest's
    # sshd on 22, reached over the bus through the node that runs it.
    code, out, err = await gstack.virtbus("expose", "vmi", "rebooter", "--port", "2222",
                                          "--target-port", "22", "--name", "rb-ssh")  # fmt: skip
    assert (code, out) == (0, "Service rb-ssh successfully created for vmi rebooter\n"), err
    assert await forwarded_banner(gstack, "svc/rb-ssh", "0:2222") == b"SSH-2.0-dropbear_2022.83"

    # `memory-dump get --create-claim --output`: QEMU's memory-only dump (an ELF core) written
    # into a claim made on the VM's node, waited for, and downloaded whole.
    code, out, err = await gstack.virtbus("memory-dump", "get", "rebooter", "--claim-name",
                                          "rb-dump", "--create-claim", "--format", "raw",
                                          "--output", str(tmp_path / "rb.dump"))  # fmt: skip
    assert code == 0, err
    assert out.startswith(
        "PVC default/rb-dump created\nSuccessfully submitted memory dump request of VM rebooter\n"
    ), out
    dump = (await gstack.state("rebooter")).memory_dump
    assert dump is not None and dump.phase == "Completed"
    done = [e for e in await gstack.events("rebooter") if isinstance(e, m.MemoryDumpCompleted)]
    data = (tmp_path / "rb.dump").read_bytes()
    assert (data[:4], len(data), done[-1].file_name) == (b"\x7fELF", done[-1].size_bytes,
                                                         dump.file_name)  # fmt: skip


async def forwarded_banner(st: QemuStack, target: str, ports: str) -> bytes:
    """The first line a `virtbus port-forward TARGET PORTS` connection reads."""
    proc = await asyncio.create_subprocess_exec(
        str(VIRTBUS), "port-forward", target, ports, "--server", st.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = b""
    try:
        said = await asyncio.wait_for(proc.stdout.readline(), 30)  # Forwarding from A:N -> P
        port = int(said.split(b" -> ")[0].rsplit(b":", 1)[1])
        for _ in range(60):  # the guest's sshd may still be starting after its reset
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                line = (await asyncio.wait_for(reader.readline(), 30)).strip()
            finally:
                writer.close()
            if line:
                return line
            await asyncio.sleep(1)
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    raise AssertionError(f"no banner through {target}: {err.decode()}")


async def agent_back(st: QemuStack, name: str, *, after: int) -> None:
    """Until the VM's guest agent is connected again (after its events from `after` on)."""
    while True:
        events = await st.until_event(name, m.GuestAgentChanged, after=after, within=BOOT_S)
        changes = [e for e in events if isinstance(e, m.GuestAgentChanged)]
        if changes[-1].connected:
            return
        after += len(events)


async def agent_on(st: QemuStack, name: str, *, node: str) -> None:
    """Until the VM runs on `node` with its AgentConnected condition; fails when the log stops
    telling of the agent without it."""
    seen = len(await st.events(name))
    while True:
        s = await st.state(name)
        if s.node == node and {"type": "AgentConnected", "status": "True"} in conditions(s):
            return
        seen += len(await st.until_event(name, m.GuestAgentChanged, after=seen, within=60))


async def test_a_guest_kernel_panic_is_a_crash_then_the_run_strategy_answers(
    gstack: QemuStack,
) -> None:
    await send(gstack.nc, tiny("panicky", strategy="Always"))  # runs once applied
    async with logged_in(gstack, "panicky") as con:
        before = len(await gstack.events("panicky"))
        await con.type("echo c > /proc/sysrq-trigger\r")
        events = await gstack.until_event("panicky", m.VMFailed, after=before, within=60)
    assert stops(events) == [("crashed", "panicked")]  # pvpanic told libvirt
    assert [e.reason for e in events if isinstance(e, m.VMFailed)] == ["guest crashed (panicked)"]
    await booted(gstack, "panicky", hostname="panicky")  # runStrategy Always: started again
    for verb in (("history", "panicky"), ("describe", "vm", "panicky")):
        code, out, err = await gstack.virtbus(*verb)
        assert code == 0, err
        assert "guest crashed (panicked)" in out, out


async def test_virtbus_up_serves_the_tiny_guest_and_the_example_boots(
    kvm_host: None, guest_disk: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = tmp_path_factory.mktemp("gu")  # short: the node's unix socket path must fit 108 bytes
    args = ("--port", "-1", "--data-dir", str(data), "--hypervisor", "qemu", "--nodes", "1")
    # the stack's bus is secured: the CLI logs in as its admin, as it would where `make run` ran
    env = {**os.environ, "VIRTBUS_CREDS": str(data / "creds" / "admin.creds"),
           "VIRTBUS_TLS_CA": str(data / "tls" / "ca.pem")}  # fmt: skip
    async with virtbus_up(*args) as (proc, url):

        async def cli(*words: str) -> None:
            run = await asyncio.create_subprocess_exec(
                str(VIRTBUS), *words, "--server", url, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await run.communicate()
            assert run.returncode == 0, (words, out, err)

        # As the README has it: apply the example, start it, and nothing else.
        await cli("apply", "-f", str(EXAMPLE))
        await cli("start", "tiny-linux")
        await cli("wait", "vm", "tiny-linux", "--for", "status=Running", "--timeout", str(BOOT_S))
        async with console(url, "tiny-linux", env=env) as con:
            await con.expect(b"tiny-linux login: ", within=BOOT_S, nudge="\r")
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 90)
        assert proc.returncode == 0
    assert named("qemu-system-x86_64", seeing=data) == set()  # the guest is gone with the stack
