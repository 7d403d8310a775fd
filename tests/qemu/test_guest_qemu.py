"""The tiny Linux guest on real QEMU nodes: it boots, applies its cloud-init seed, and its own
lifecycle (ACPI shutdown honoured or ignored, poweroff, reboot, kernel panic) is recorded with
its cause.

The guest is built here from Debian packages (`virtbus/guest/build.py`, cached by content), pushed
to a real registry on loopback as the container disk `examples/vm-tiny-linux.yaml` names, and
pulled by the node like any other. Everything inside the guest is read and typed through `virtbus
console` (the serial console over the bus). On a host whose KVM is PVM the node runs the guest on
TCG (`workers/hypervisor.py`, `accelerator`): slower, but a stock kernel boots there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemustack import QemuStack, apply, qemu_stack
from registry import available, push_disk, registry_server

from bus.client import send
from events import commands as c
from events import model as m
from events.manifest import parse_documents
from virtbus.guest.build import guest_image
from virtbus.guestdisk import IMAGE

pytestmark = pytest.mark.kvm

NODE, NODE_INDEX = "node-g", 24  # its own VNC/migration port range
EXAMPLE = Path(__file__).parents[2] / "examples" / "vm-tiny-linux.yaml"
VIRTBUS = Path(sys.executable).parent / "virtbus"
BOOT_S = 120  # a boot on TCG (PVM hosts) under a loaded 2-core machine


@pytest.fixture(scope="module")
def guest_disk() -> Path:
    return guest_image()


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
        async with qemu_stack(base, nodes={NODE: NODE_INDEX}) as st:
            yield st


def tiny(name: str, *, strategy: str = "Halted", grace: int = 30, user_data: str = "") -> Any:
    """The example's VM under `name`, with its run strategy, grace period and user data."""
    doc = parse_documents(EXAMPLE.read_text())[0]
    doc["metadata"]["name"] = name
    doc["spec"]["runStrategy"] = strategy
    spec = doc["spec"]["template"]["spec"]
    spec["terminationGracePeriodSeconds"] = grace
    if user_data:
        spec["volumes"][1]["cloudInitNoCloud"]["userData"] = user_data
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
        head, _, self.seen = self.seen.partition(needle)
        return head + needle


@contextlib.asynccontextmanager
async def console(st: QemuStack, name: str) -> AsyncIterator[Console]:
    proc = await asyncio.create_subprocess_exec(
        str(VIRTBUS), "console", name,
        "--server", st.url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
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
    await con.expect(b"# ", within=30)


async def test_tiny_guest_boots_to_a_login_with_its_cloud_init_applied(gstack: QemuStack) -> None:
    user_data = (
        "#cloud-config\nhostname: guest-one\nruncmd:\n- echo ran-by-cloud-init > /run/marker\n"
    )
    await send(gstack.nc, tiny("tiny-linux", user_data=user_data))
    await send(gstack.nc, c.StartVM(name="tiny-linux"))
    await gstack.until("tiny-linux", "Running", within=BOOT_S)
    pulled = [e for e in await gstack.events("tiny-linux") if isinstance(e, m.ImagePulled)]
    assert [p.image for p in pulled] == [IMAGE]
    async with console(gstack, "tiny-linux") as con:
        await root_shell(con, hostname="guest-one")  # cloud-init's hostname, in the prompt
        await con.type("cat /run/marker; hostname\r")
        await con.expect(b"ran-by-cloud-init\r\nguest-one\r\n", within=30)
