"""`virtbus up --hypervisor qemu`: a QEMU/KVM node with its own libvirtd, gone with the stack."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from upstack import as_admin, named, virtbus_up

from bus.store import EventStore
from events import model as m
from events.names import Ref
from workers.accel import accelerator


@pytest.mark.kvm
async def test_virtbus_up_with_qemu_nodes(kvm_host: None, data_dir: Path) -> None:
    # Only this stack's daemons and guests: those that see mounts from its data dir (tests of
    # other sessions may run nodes of their own on this machine meanwhile).
    def ours() -> set[int]:
        return named("libvirtd", seeing=data_dir) | named("qemu-system-x86_64", seeing=data_dir)

    args = ("--port", "-1", "--data-dir", str(data_dir), "--hypervisor", "qemu", "--nodes", "1")
    async with virtbus_up(*args) as (proc, url):
        nc = await as_admin(url, data_dir)
        try:
            store = EventStore(nc)
            for _ in range(600):  # a first node on a machine probes QEMU for ~8 s
                if history := await store.read(Ref.node("node-a")):
                    break
                await asyncio.sleep(0.05)
            registered = history[0].envelope.data
            assert isinstance(registered, m.NodeRegistered)
            # KVM where it boots a stock guest kernel, else TCG (workers/hypervisor.py, accelerator)
            assert (registered.hypervisor, registered.kvm) == ("qemu", accelerator()[0] == "kvm")
            assert registered.libvirt_uri.startswith("qemu+unix:///system?socket=")
            assert named("libvirtd", seeing=data_dir)  # the node's own daemon runs
        finally:
            await nc.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
    for _ in range(100):  # the node's libvirtd is gone with it
        if not ours():
            break
        await asyncio.sleep(0.1)
    assert ours() == set()
