"""The seed VM's containerDisk pulled from a real registry by its node worker, end to end on the
libvirt test driver: the VM runs, and its history says which registry served the image."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clirun import virtbus
from driverstack import Stack, seed
from registry import RegistryServer, available, push_disk, registry_server, small_qcow2

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref

IMAGE = "kubevirt/virtio-container-disk"  # what the seed manifest names


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryServer]:
    """A registry holding the seed's container disk, configured for the nodes started after."""
    assert available(), "docker-registry is missing: run `make setup`"
    with registry_server(tmp_path / "registry") as reg:
        push_disk(reg.url, IMAGE, small_qcow2(tmp_path / "disk.qcow2"))
        # A dead mirror first: the pull fails over to the registry that has the image.
        monkeypatch.setenv("VIRTBUS_REGISTRIES", f"http://127.0.0.1:1,{reg.url}")
        yield reg


def provide_claim(st: Stack, node: str) -> None:
    claim = st.node_dir(node) / "volumes" / "default" / "iso-centos7"
    claim.mkdir(parents=True, exist_ok=True)
    (claim / "disk.img").write_bytes(b"\0" * 4096)


async def until_event(st: Stack, name: str, kind: type[m.Event]) -> list[m.Event]:
    for _ in range(400):
        events = [r.envelope.data for r in await st.store.read(Ref.vm(name))]
        if any(isinstance(e, kind) for e in events):
            return events
        await asyncio.sleep(0.05)
    pytest.fail(f"{name}: no {kind.__name__} in {[type(e).__name__ for e in events]}")


async def test_the_seed_vm_runs_from_a_pulled_container_disk(
    stack: Stack,
    registry: RegistryServer,
) -> None:
    provide_claim(stack, "node-a")
    await stack.node("node-a")
    await send(stack.nc, seed())
    await send(stack.nc, c.StartVM(name="centos7"))
    s = await stack.until("centos7", "Running")
    assert s.node == "node-a"
    kinds = await stack.kinds("centos7")
    # Pulling announced, pulled, then started.
    assert kinds.index("ImagePulling") < kinds.index("ImagePulled") < kinds.index("LauncherCreated")
    doc = (await virtbus("history", "centos7", "-o", "json", "--server", stack.url)).json()
    [pulled] = [i for i in doc["items"] if i["type"] == "io.virtbus.vm.image_pulled.v1"]
    assert pulled["category"] == "Observation"
    assert f"image={IMAGE}" in pulled["summary"]
    assert f"registry={registry.url}" in pulled["summary"]
    assert "http://127.0.0.1:1: connection refused" in pulled["summary"]
    # Started again, the node has the image: no second pull even with the registry gone.
    registry.stop()
    await send(stack.nc, c.StopVM(name="centos7"))
    await stack.until("centos7", "Stopped")
    await send(stack.nc, c.StartVM(name="centos7"))
    await stack.until("centos7", "Running")
    assert [k for k in await stack.kinds("centos7") if k.startswith("ImagePull")] == [
        "ImagePulling",
        "ImagePulled",
    ]


def with_image(cmd: c.ApplyVM, image: str) -> c.ApplyVM:
    spec: dict[str, Any] = cmd.spec
    for volume in spec["template"]["spec"]["volumes"]:
        if "containerDisk" in volume:
            volume["containerDisk"]["image"] = image
    return cmd


async def test_an_image_no_registry_has_fails_the_start_with_err_image_pull(
    stack: Stack,
    registry: RegistryServer,
) -> None:
    provide_claim(stack, "node-a")
    await stack.node("node-a")
    await send(stack.nc, with_image(seed("nodisk"), "kubevirt/no-such-disk:v1"))
    await send(stack.nc, c.StartVM(name="nodisk"))
    events = await until_event(stack, "nodisk", m.VMStartFailed)
    failed = next(e for e in events if isinstance(e, m.VMStartFailed))
    assert failed.status == "ErrImagePull"
    assert failed.reason == (
        "spec.template.spec.volumes[2].containerDisk.image: cannot pull "
        "kubevirt/no-such-disk:v1: http://127.0.0.1:1: connection refused; "
        f"{registry.url}: not found (HTTP 404)"
    )
    assert "LauncherCreated" not in [type(e).__name__ for e in events]
