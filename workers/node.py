"""Running one node: its hypervisor (a libvirt URI; libvirt's test driver with a per-node state
file; or a libvirtd of the node's own on QEMU/KVM), its data dir and its settings, then the worker.

`python -m workers` calls it; so does the embedded stack `virtbus up`, through one
`python -m workers` process per node. Whoever starts a node says how its domains migrate
(`MigrationSettings`); a node with a libvirtd of its own sets the one-machine settings itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from workers.node_context import MigrationSettings
from workers.qemunodes import QemuNode
from workers.registry import Registries
from workers.vmnet import VMNetwork
from workers.worker import Worker

# libvirt's test driver reads a node's capacity from a file; its state stays in the process.
_TEST_NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes>
    <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{memory_kib}</memory>
</node>
"""


def libvirt_test_uri(data_dir: Path, *, cpus: int = 8, memory_gib: int = 16) -> str:
    """A `test:///` URI with this node's own state (each open of a file is private)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "test-node.xml"
    path.write_text(_TEST_NODE_XML.format(cpus=cpus, memory_kib=memory_gib << 20))
    return f"test://{path.resolve()}"


async def run_node(
    nc: Client, *, node: str, uri: str | None, data_dir: Path, stop: asyncio.Event,
    labels: dict[str, str] | None = None, pods: str = "process", kube_url: str | None = None,
    hypervisor: str = "test", index: int = 0, registries: str | None = None,
    migration: MigrationSettings | None = None, vm_network: bool = False,
) -> None:  # fmt: skip
    """Run one node worker until `stop`: on `uri`, else on the test driver, else (`hypervisor`
    "qemu") on a libvirtd of its own that this node starts and stops (`index` keeps its ports
    apart from other nodes on this machine). `registries` overrides `$VIRTBUS_REGISTRIES`;
    `migration` is how this node's domains migrate (libvirt's defaults when None); with
    `vm_network` the node gives its VMs their addresses for real (workers/vmnet.py)."""
    node_dir = data_dir / node
    if uri is None and hypervisor == "qemu":
        async with QemuNode(data_dir / "qemu", node, index=index) as qemu:
            await run_node(nc, node=node, uri=qemu.uri, data_dir=data_dir, stop=stop,
                           labels=labels, pods=pods, kube_url=kube_url,
                           registries=registries, migration=qemu.migration,
                           vm_network=vm_network)  # fmt: skip
        if vm_network:  # the node's libvirtd destroyed its domains: their networks go too
            await VMNetwork(node_dir / "net", node=node).sweep()
        return
    if uri is None:
        uri = await asyncio.to_thread(libvirt_test_uri, node_dir)
    worker = Worker(nc, node=node, uri=uri, data_dir=node_dir, host_root=node_dir / "host",
                    labels=labels, pods=pods, kube_url=kube_url,
                    registries=Registries.from_env(registries), migration=migration,
                    vm_network=vm_network)  # fmt: skip
    await worker.run(stop)
