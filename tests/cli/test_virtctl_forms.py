"""virtctl's command lines as KubeVirt's documentation writes them: `pause|unpause vm|vmi NAME`,
`start --paused`, `restart --force --grace-period 0`, `image-upload dv|pvc NAME --size`
(`--no-create`, `--archive-path`), `console --timeout`, `version`. The CLI is a subprocess against
an in-process orchestrator and test-driver nodes; every wait follows the log."""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path

from clirun import Result, virtbus
from driverstack import Stack
from manifests import vm

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref

MiB = 1 << 20
UNPAUSED = "jsonpath={.status.printableStatus}=Running"


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def test_pause_forms_start_paused_and_forced_restart(stack: Stack) -> None:
    await stack.node("node-a")
    await send(stack.nc, c.ApplyVM(name="v", spec=vm("v")["spec"]))
    started = await cli(stack, "start", "v", "--paused")
    assert started.ok().out == "VM v was scheduled to start\n"
    paused = await cli(stack, "wait", "vmi", "v", "--for", "condition=Paused")
    assert paused.ok().out == "virtualmachineinstance.kubevirt.io/v condition met\n"
    assert (await stack.state("v")).paused

    unpaused = await cli(stack, "unpause", "vmi", "v")
    assert unpaused.ok().out == "VMI v was scheduled to unpause\n"
    (await cli(stack, "wait", "vm", "v", "--for", UNPAUSED)).ok()
    assert (await cli(stack, "pause", "vm", "v")).ok().out == "VMI v was scheduled to pause\n"
    (await cli(stack, "wait", "vmi/v", "--for", "condition=Paused")).ok()
    assert (await cli(stack, "unpause", "v")).ok().out == "VMI v was scheduled to unpause\n"
    (await cli(stack, "wait", "vm/v", "--for", UNPAUSED)).ok()

    before = (await stack.state("v")).vmi_uid
    forced = await cli(stack, "restart", "v", "--force", "--grace-period", "0")
    assert forced.ok().out == "VM v was scheduled to restart\n"
    asked = [r.envelope.data for r in await stack.store.read(Ref.vm("v"))
             if isinstance(r.envelope.data, m.VMRestartRequested)]  # fmt: skip
    assert asked == [m.VMRestartRequested(grace_period_seconds=0, force=True)]
    for _ in range(400):  # the fold of the log: the new instance running, not the old one
        s = await stack.state("v")
        if s.vmi_uid not in ("", before) and s.status == "Running":
            break
        await asyncio.sleep(0.05)
    assert (s.status, s.paused) == ("Running", False) and s.vmi_uid not in ("", before)


async def test_image_upload_in_virtctls_form(stack: Stack, tmp_path: Path) -> None:
    await stack.node("node-a")
    img = tmp_path / "disk.img"
    img.write_bytes(b"\x01" * MiB)
    up = await cli(stack, "image-upload", "pvc", "data", "--size", "2Mi", "--image-path", str(img),
                   "--uploadproxy-url", "https://cdi-uploadproxy", "--insecure")  # fmt: skip
    assert up.ok().out == "Uploading disk.img completed successfully\n"
    got = await cli(stack, "get", "pvc/data", "-o", "jsonpath={.status.phase} "
                    "{.status.capacity.storage}")  # fmt: skip
    assert got.ok().out == "Bound 2Mi"

    with tarfile.open(tar := tmp_path / "disk.tar", "w") as t:
        t.add(img, arcname="disk.img")
    dv = await cli(stack, "image-upload", "dv", "from-tar", "--size", "1Mi", "--archive-path",
                   str(tar))  # fmt: skip
    assert dv.ok().out == "Uploading disk.tar completed successfully\n"
    phase = await cli(stack, "get", "dv/from-tar", "-o", "jsonpath={.status.phase}")
    assert phase.ok().out == "Succeeded"  # a DataVolume, as virtctl makes one
    data = stack.node_dir("node-a") / "volumes" / "default" / "from-tar" / "disk.img"
    assert data.read_bytes() == b"\x01" * MiB

    again = await cli(stack, "image-upload", "pvc", "data", "--no-create", "--image-path", str(img))
    assert (again.code, again.out) == (1, "")
    assert again.err == ('error: persistentvolumeclaims "data" is Bound and takes no upload; '
                         "--no-create uploads only into a claim created for one\n")  # fmt: skip
    nowhere = await cli(stack, "image-upload", "pvc", "nope", "--no-create", "--image-path",
                        str(img))  # fmt: skip
    assert nowhere.err == ('error: persistentvolumeclaims "nope" not found; leave out '
                           "--no-create to create it\n")  # fmt: skip
    old = await cli(stack, "image-upload", "--pvc-name", "old", "--pvc-size", "2Mi",
                    "--image-path", str(img))  # the deprecated form still works  # fmt: skip
    assert old.ok().out == "Uploading disk.img completed successfully\n"


async def test_console_timeout_and_version(stack: Stack) -> None:
    await stack.node("node-a")
    missing = await cli(stack, "console", "ghost", "--timeout", "1")
    assert (missing.code, missing.err) == (
        1, 'error: virtualmachineinstance.kubevirt.io "ghost" not found\n')  # fmt: skip
    await send(stack.nc, c.ApplyVM(name="off", spec=vm("off")["spec"]))
    stopped = await cli(stack, "console", "off", "--timeout", "1")  # nothing starting: no wait
    assert (stopped.code, stopped.err) == (
        1, 'error: VirtualMachineInstance "off" is not running\n')  # fmt: skip

    version = (await cli(stack, "version")).ok().out.splitlines()
    assert [line.split(" version.Info{")[0] for line in version] == [
        "Client Version:", "Server Version:"]  # fmt: skip
    assert all('GitVersion:"v0.1.0"' in line for line in version)
    client = await virtbus("version", "--client", "--server", "nats://127.0.0.1:1")
    assert client.ok().out == version[0] + "\n"  # no bus needed for the client's own
