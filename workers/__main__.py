"""`python -m workers --node NAME [--libvirt URI] [--pods process|kubernetes] [--registries URLS]`:
one node worker.

`--pods kubernetes` runs each VM's launcher as a pod (in-cluster config, or `--kube-url URL`).
`--vm-network` makes each VM's address real (a network namespace per VM; workers/vmnet.py).
`--shared-storage` and `--migration-address` say how the node's domains migrate (with
`--hypervisor qemu` the node sets them itself: nodes on one machine).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import uvloop
from nats.aio.client import Client

from bus.telemetry import add_process_args, serve, start_telemetry
from events.errors import ValidationError
from workers.node import run_node
from workers.node_context import MigrationSettings
from workers.registry import Registries


async def _main(args: argparse.Namespace) -> None:
    async def body(nc: Client, stop: asyncio.Event) -> None:
        await run_node(nc, node=args.node, uri=args.libvirt, data_dir=Path(args.data_dir),
                       stop=stop, pods=args.pods, kube_url=args.kube_url,
                       hypervisor=args.hypervisor, index=args.index,
                       registries=args.registries,
                       migration=MigrationSettings(shared_storage=args.shared_storage,
                                                   address=args.migration_address),
                       vm_network=args.vm_network)  # fmt: skip

    await serve(args, name=f"virtbus-worker-{args.node}", body=body)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument("--libvirt", default=None, help="libvirt URI (default: the test driver)")
    parser.add_argument("--pods", default="process", choices=["process", "kubernetes"])
    parser.add_argument(
        "--hypervisor", default="test", choices=["test", "qemu"],
        help="without --libvirt: the test driver, or a libvirtd of this node's own (QEMU/KVM)",
    )  # fmt: skip
    parser.add_argument("--index", type=int, default=0, help="qemu: keeps node ports apart")
    parser.add_argument(
        "--kube-url", default=None, help="Kubernetes API URL (default: in-cluster or kubeconfig)"
    )
    parser.add_argument("--data-dir", default=".virtbus/nodes")
    parser.add_argument(
        "--registries", default=None, metavar="URL[,URL...]",
        help="container disk registries and mirrors, most preferred first "
        "(default: $VIRTBUS_REGISTRIES; plain http:// only for loopback)",
    )  # fmt: skip
    parser.add_argument(
        "--shared-storage", action="store_true",
        help="every node sees this node's disks at the same paths: live migration leaves them",
    )  # fmt: skip
    parser.add_argument(
        "--migration-address", default="", metavar="ADDR",
        help="the address migration data travels over (default: libvirt's, the target's name)",
    )  # fmt: skip
    parser.add_argument(
        "--vm-network", action="store_true",
        help="give each VM its address for real: a network namespace per VM, the guest behind "
        "it by KubeVirt's masquerade (root, ip, iptables, dnsmasq)",
    )  # fmt: skip
    add_process_args(parser)
    args = parser.parse_args()
    try:  # a bad registry list is a usage error now, not a crash at the first pull
        Registries.from_env(args.registries)
    except ValidationError as err:
        parser.error(err.message)
    start_telemetry("worker", metrics_port=args.metrics_port)
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
