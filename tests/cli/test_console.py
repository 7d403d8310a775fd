"""`virtbus vnc`, `console` and `port-forward` refusals on libvirt's test driver (no real display,
pty or VM network there): each ends with exit 1 and the reason, whether the CLI or the node
refuses. The real sessions are tested on QEMU/KVM in test_console_qemu.py and (port-forward,
ssh) test_guest_qemu.py."""

from __future__ import annotations

import asyncio
import json
import re

from clirun import CLI, cli_env
from driverstack import Stack, pvc_vm
from paths import ROOT

from bus.client import send
from events import commands as c
from events import model as m


async def run(st: Stack, *args: str, connect: bool = False) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, "--server", st.url, cwd=ROOT, env=cli_env(None),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        if connect:  # a VNC client arrives: only then is the node asked
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert re.fullmatch(rb'\{"port":[0-9]+\}\n', line), line  # virtctl's exact line
            port = json.loads(line)["port"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, nothing sent
            writer.close()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_vnc_console_and_port_forward_refuse_with_the_reason(stack: Stack) -> None:
    await stack.node("node-a")
    assert await run(stack, "vnc", "nope", "--proxy-only") == (
        1, 'error: virtualmachineinstance.kubevirt.io "nope" not found\n',
    )  # fmt: skip
    await send(stack.nc, c.CreateVolume(name="root", size="1Mi"))
    await send(stack.nc, pvc_vm("quiet", "root"))
    assert await run(stack, "console", "quiet") == (
        1, 'error: VirtualMachineInstance "quiet" is not running\n',
    )  # fmt: skip
    await send(stack.nc, c.StartVM(name="quiet"))
    await stack.until("quiet", "Running")
    code, err = await run(stack, "vnc", "quiet", "--proxy-only", connect=True)
    assert (code, err) == (1, 'error: VMI "quiet" has no VNC display\n')
    code, err = await run(stack, "console", "quiet")
    assert (code, err) == (1, 'error: VMI "quiet" has no serial console\n')
    # port-forward: the node refuses what it cannot reach, and says why; bad targets and ports
    # are the CLI's to refuse.
    code, err = await run(stack, "port-forward", "--stdio", "vm/quiet", "22")
    assert (code, err) == (1, "error: node node-a has no VM network: 10.244.0.2 cannot be "
                              "reached there (QEMU nodes with --vm-network)\n")  # fmt: skip
    code, err = await run(stack, "port-forward", "quiet", "22")
    assert (code, err) == (
        1,
        "error: target: 'quiet' is not TYPE/NAME[/NAMESPACE] (TYPE vm or vmi)\n",
    )
    code, err = await run(stack, "port-forward", "vm/quiet", "22:ssh")
    assert (code, err) == (1, "error: port: '22:ssh' is not [tcp/|udp/][LOCAL:]REMOTE\n")
    code, err = await run(stack, "port-forward", "--stdio", "vm/quiet", "1", "2")
    assert (code, err) == (1, "error: port: --stdio forwards exactly one port\n")
    code, err = await run(stack, "port-forward", "--stdio", "vmi/nope.default", "22")
    assert (code, err) == (1, 'error: virtualmachineinstance.kubevirt.io "nope" not found\n')
    # The guest-agent verbs: the test driver's guests have no agent, and the node says so.
    for verb in ("guestosinfo", "userlist", "fslist"):
        code, err = await run(stack, verb, "quiet")
        assert (code, err) == (1, 'error: VirtualMachineInstance "quiet" has no guest agent '
                                  "connected\n"), verb  # fmt: skip
    # soft-reboot is a command, in the log: without an agent the node presses the ACPI button.
    assert await run(stack, "soft-reboot", "quiet") == (0, "")
    for _ in range(400):
        sent = [e for e in await stack.events("quiet") if isinstance(e, m.SoftRebootSent)]
        if sent:
            break
        await asyncio.sleep(0.05)
    assert sent == [m.SoftRebootSent(node="node-a", method="acpi")]
    kinds = await stack.kinds("quiet")
    assert kinds[kinds.index("VMSoftRebootRequested") :] == ["VMSoftRebootRequested",
                                                            "SoftRebootSent"]  # fmt: skip
