"""CDI DataVolumes end to end: each source (http, registry, upload, blank, pvc clone) filled for
real by the node, CDI's phases and progress, `get|describe|delete dv`, and a VM's
`dataVolumeTemplates` (made with it, deleted with it) and `dataVolume:` volumes.

The CLI runs as a subprocess; the orchestrator and test-driver nodes run in-process; the http
source is a local aiohttp server the test starts, the registry Debian's docker-registry.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from clirun import Result, virtbus
from driverstack import Stack
from registry import RegistryServer, available, push_disk, registry_server, small_qcow2

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref

MiB = 1 << 20
IMAGE = (b"virtbus-import!!" * (MiB // 16)) * 3  # 3 MiB of data the import must carry whole


async def cli(st: Stack, *args: str, input: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=input)


@pytest.fixture
async def http_source() -> AsyncIterator[str]:
    """A local web server: /disk.img is the image, anything else 404."""

    async def disk(_: web.Request) -> web.Response:
        return web.Response(body=IMAGE, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/disk.img", disk)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def dv(name: str, source: str, size: str = "8Mi") -> str:
    return f"""\
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: {name}
spec:
  source:
    {source}
  storage:
    resources:
      requests:
        storage: {size}
"""


async def phase(st: Stack, name: str) -> str:
    return (await cli(st, "get", "dv", name, "-o", "jsonpath={.status.phase}")).ok().out


async def wait_dv(st: Stack, name: str, want: str = "Succeeded") -> None:
    (await cli(st, "wait", "dv", name, "--for", f"jsonpath={{.status.phase}}={want}",
               "--timeout", "30")).ok()  # fmt: skip


async def wait_restarts(st: Stack, name: str, n: int) -> None:
    (await cli(st, "wait", "dv", name, "--for", f"jsonpath={{.status.restartCount}}={n}",
               "--timeout", "30")).ok()  # fmt: skip


async def events_of(st: Stack, name: str) -> list[m.Event]:
    return [r.envelope.data for r in await st.store.read(Ref("volume", "default", name))]


async def test_http_import_clone_blank_and_a_vm_of_data_volumes(
    stack: Stack, tmp_path: Path, http_source: str
) -> None:
    await stack.node("node-a")
    await stack.node("node-b")
    path = tmp_path / "dvs.yaml"
    path.write_text(
        dv("imported", f"http: {{url: {http_source}/disk.img}}") + "---\n"
        + dv("broken", f"http: {{url: {http_source}/nothing.img}}")
    )  # fmt: skip
    assert (await cli(stack, "apply", "-f", str(path))).ok().out == (
        "datavolume.cdi.kubevirt.io/imported created\ndatavolume.cdi.kubevirt.io/broken created\n"
    )
    await wait_dv(stack, "imported")
    got = await events_of(stack, "imported")
    assert isinstance(got[0], m.VolumeCreated) and got[0].source == f"import:{http_source}/disk.img"
    progress = [e.progress for e in got if isinstance(e, m.VolumeProgress)]
    assert progress[0] == "0.00%" and all(re.fullmatch(r"\d+\.\d\d%", p) for p in progress)
    assert [float(p[:-1]) for p in progress] == sorted(float(p[:-1]) for p in progress)
    assert float(progress[-1][:-1]) == 100.0  # the last chunk's report: all bytes arrived
    assert isinstance(got[-1], m.VolumeReady)
    node = got[0].node
    disk = stack.node_dir(node) / "volumes" / "default" / "imported" / "disk.img"
    data = disk.read_bytes()
    assert len(data) == 8 * MiB and data[: len(IMAGE)] == IMAGE  # grown to the claim, as CDI does
    obj = (await cli(stack, "get", "dv", "imported", "-o", "json")).json()
    assert obj["status"] == {"phase": "Succeeded", "progress": "100.0%", "claimName": "imported"}
    assert obj["spec"]["source"] == {"http": {"url": f"{http_source}/disk.img"}}
    # A URL that answers 404: as CDI's importer pod, the fill fails and is tried again after a
    # back-off; the DataVolume stays in progress, counts the restart and says why.
    await wait_restarts(stack, "broken", 1)
    failed = (await cli(stack, "get", "dv", "broken", "-o", "json")).json()["status"]
    assert failed == {"phase": "ImportInProgress", "progress": "N/A", "claimName": "broken",
                      "restartCount": 1, "message": (
                          "Unable to connect to http data source: expected status code 200, got "
                          "404. Status: 404 Not Found")}  # fmt: skip
    table = (await cli(stack, "get", "dv")).ok().out.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    assert [r.split()[:4] for r in table[1:]] == [
        ["broken", "ImportInProgress", "N/A", "1"], ["imported", "Succeeded", "100.0%", "0"],
    ]  # fmt: skip

    # A clone of it, made on the node that holds its source; and a blank one, bound late.
    (tmp_path / "more.yaml").write_text(
        dv("copy", "pvc: {name: imported}", "16Mi") + "---\n" + dv("scratch", "blank: {}")
    )
    (await cli(stack, "apply", "-f", str(tmp_path / "more.yaml"))).ok()
    await wait_dv(stack, "copy")
    copy = stack.node_dir(node) / "volumes" / "default" / "copy" / "disk.img"
    assert copy.read_bytes()[: len(IMAGE)] == IMAGE and copy.stat().st_size == 16 * MiB
    assert await phase(stack, "scratch") == "WaitForFirstConsumer"
    small = await cli(stack, "apply", "-f", "-", input=dv("tiny", "pvc: {name: imported}", "1Mi"))
    assert small.err == ("error: tiny: target resources requests storage size is smaller than "
                         "the source\n")  # fmt: skip

    # A VM with a dataVolumeTemplate (an import) and the blank DataVolume: both on its node.
    vm = f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: app}}
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata: {{name: app-root}}
    spec:
      source: {{http: {{url: {http_source}/disk.img}}}}
      pvc:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 4Mi}}}}
  template:
    spec:
      domain:
        devices:
          disks: [{{name: root, disk: {{bus: virtio}}}}, {{name: data, disk: {{bus: virtio}}}}]
        resources: {{requests: {{memory: 64Mi}}}}
      volumes:
      - {{name: root, dataVolume: {{name: app-root}}}}
      - {{name: data, dataVolume: {{name: scratch}}}}
"""
    applied = (await cli(stack, "apply", "-f", "-", input=vm)).ok().out
    assert applied == ("datavolume.cdi.kubevirt.io/app-root created\n"
                       "virtualmachine.kubevirt.io/app created\n")  # fmt: skip
    s = await stack.until("app", "Running", within=30)
    assert await phase(stack, "scratch") == "Succeeded"
    for claim in ("app-root", "scratch"):
        assert (stack.node_dir(s.node) / "volumes" / "default" / claim / "disk.img").is_file()
    owner = (await cli(stack, "get", "dv", "app-root", "-o", "json")).json()["metadata"]
    assert owner["ownerReferences"][0]["name"] == "app"
    (await cli(stack, "delete", "vm", "app")).ok()
    await stack.until("app", "Deleted")
    (await cli(stack, "wait", "dv", "app-root", "--for", "delete", "--timeout", "15")).ok()
    assert await phase(stack, "scratch") == "Succeeded"  # not the VM's own: it stays
    assert (await cli(stack, "delete", "dv", "scratch")).ok().out == (
        'datavolume.cdi.kubevirt.io "scratch" deleted\n'
    )
    claim_only = await cli(stack, "apply", "-f", "-", input=(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: plain}\nspec:\n"
        "  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Mi}}\n"))  # fmt: skip
    claim_only.ok()
    not_dv = await cli(stack, "delete", "dv", "plain")
    assert not_dv.err == 'error: datavolumes.cdi.kubevirt.io "plain" not found\n'


async def test_an_upload_data_volume_is_filled_by_image_upload(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.node("node-a")
    (await cli(stack, "apply", "-f", "-", input=dv("up", "upload: {}", "4Mi"))).ok()
    described = (await cli(stack, "describe", "dv", "up")).ok().out
    assert "UploadReady" in described and "cdi.kubevirt.io/v1beta1" in described
    image = tmp_path / "disk.img"
    image.write_bytes(IMAGE[:MiB])
    (await cli(stack, "image-upload", "dv", "up", "--no-create", "--image-path",
               str(image))).ok()  # fmt: skip
    assert await phase(stack, "up") == "Succeeded"
    data = (stack.node_dir("node-a") / "volumes" / "default" / "up" / "disk.img").read_bytes()
    assert data[:MiB] == IMAGE[:MiB]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryServer]:
    assert available(), "docker-registry is missing: run `make setup`"
    with registry_server(tmp_path / "registry") as reg:
        push_disk(reg.url, "kubevirt/cirros", small_qcow2(tmp_path / "d.qcow2", size="2M"))
        monkeypatch.setenv("VIRTBUS_REGISTRIES", reg.url)
        yield reg


async def test_a_registry_data_volume_imports_a_container_disk(
    stack: Stack, registry: RegistryServer
) -> None:
    await stack.node("node-a")
    source = "registry: {url: 'docker://kubevirt/cirros'}"
    (await cli(stack, "apply", "-f", "-", input=dv("reg", source, "4Mi"))).ok()
    await wait_dv(stack, "reg")
    disk = stack.node_dir("node-a") / "volumes" / "default" / "reg" / "disk.img"
    assert disk.stat().st_size == 4 * MiB and not disk.read_bytes().startswith(b"QFI")  # raw now
    missing = "registry: {url: 'docker://kubevirt/nothing'}"
    (await cli(stack, "apply", "-f", "-", input=dv("gone", missing))).ok()
    await wait_restarts(stack, "gone", 1)  # tried again after a back-off, as CDI's importer pod
    assert await phase(stack, "gone") == "ImportInProgress"
    reason = (await cli(stack, "get", "dv", "gone", "-o", "jsonpath={.status.message}")).ok().out
    assert "kubevirt/nothing" in reason and "not found" in reason
    await send(stack.nc, c.DeleteVolume(name="gone"))


async def test_an_import_that_failed_is_tried_again_and_succeeds_once_the_url_answers(
    stack: Stack,
) -> None:
    """CDI restarts a failed importer pod after a back-off: a URL that answers only later fills
    the DataVolume at the next try, and its restart is counted."""
    gate = {"open": False}

    async def late(_: web.Request) -> web.Response:
        if not gate["open"]:
            return web.Response(status=503, text="not yet")
        return web.Response(body=IMAGE, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/late.img", late)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/late.img"
        await stack.node("node-a")
        (await cli(stack, "apply", "-f", "-", input=dv("late", f"http: {{url: {url}}}"))).ok()
        await wait_restarts(stack, "late", 1)
        why = ("Unable to connect to http data source: expected status code 200, got 503. "
               "Status: 503 Service Unavailable")  # fmt: skip
        assert await events_of(stack, "late") == [
            m.VolumeCreated(size_bytes=8 * MiB, node="node-a", source=f"import:{url}",
                            data_volume=True),
            m.VolumeProgress(progress="0.00%"),
            m.VolumePopulationFailed(reason=why),
        ]  # fmt: skip
        gate["open"] = True
        await wait_dv(stack, "late")  # the next try, 10 s after the failure
        got = await events_of(stack, "late")
        assert isinstance(got[-1], m.VolumeReady) and len(got) > 4
        assert all(isinstance(e, m.VolumeProgress) for e in got[3:-1])
        status = (await cli(stack, "get", "dv", "late", "-o", "json")).json()["status"]
        assert status == {"phase": "Succeeded", "progress": "100.0%", "claimName": "late",
                          "restartCount": 1}  # fmt: skip
        disk = stack.node_dir("node-a") / "volumes" / "default" / "late" / "disk.img"
        assert disk.read_bytes()[: len(IMAGE)] == IMAGE
    finally:
        await runner.cleanup()
