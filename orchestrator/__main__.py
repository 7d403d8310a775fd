"""`python -m orchestrator [--server URL] [--creds F --tls-ca F] [--trust-dir D] [--data-dir D]
[--migrations FILE] [--dispatcher-creds F] [--vmi-cidr CIDR] [--replicas N]`: the orchestrator
alone, on a bus. FILE is KubeVirt's `spec.configuration.migrations` as YAML; CIDR the VM network's
address pool; N the copies of each stream and bucket it creates (a cluster's, as in Kubernetes)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from pathlib import Path

import uvloop
from nats.aio.client import Client

from bus.connect import configured, connect
from bus.provision import provision
from bus.roles import record_users
from bus.store import EventStore
from bus.telemetry import add_process_args, serve, start_telemetry
from bus.trust import load
from events.errors import ValidationError
from orchestrator.app import run_orchestrator
from orchestrator.ipam import configured_cidr
from orchestrator.migrations import load_policy


async def _main(args: argparse.Namespace) -> None:
    async def body(nc: Client, stop: asyncio.Event) -> None:
        await provision(nc.jetstream(), replicas=args.replicas)
        policy = load_policy(Path(args.migrations)) if args.migrations else None
        trust = load(Path(args.trust_dir)) if args.trust_dir else None
        if trust is not None:  # the stack's own users, where no `virtbus up` recorded them
            bootstrap = EventStore(nc, source="/virtbus/orchestrator/users")
            await record_users(bootstrap, trust.own_identities(), actor="virtbus/deploy")
        hooks = None
        if args.dispatcher_creds and not args.no_webhooks:  # the dispatcher as itself
            access = dataclasses.replace(configured(), creds=args.dispatcher_creds)
            hooks = await connect(args.server, name="virtbus-webhooks", access=access,
                                  lasting=True)  # fmt: skip
        try:
            await run_orchestrator(nc, data_dir=Path(args.data_dir), stop=stop,
                                   node_grace_s=args.node_grace, migration_policy=policy,
                                   webhooks=not args.no_webhooks, trust=trust,
                                   webhooks_nc=hooks, name=args.name,
                                   vmi_cidr=args.vmi_cidr)  # fmt: skip
        finally:
            if hooks is not None:
                await hooks.close()

    await serve(args, name="virtbus-orchestrator", body=body)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__)
    parser.add_argument("--data-dir", default=".virtbus/orchestrator")
    parser.add_argument("--migrations", default=None, help="migration settings, YAML")
    parser.add_argument(
        "--vmi-cidr", default=None, metavar="CIDR",
        help="the VM network's address pool (default $VIRTBUS_VMI_CIDR, else 10.244.0.0/16)",
    )  # fmt: skip
    parser.add_argument("--no-webhooks", action="store_true",
                        help="run the webhook dispatcher as its own process instead")  # fmt: skip
    parser.add_argument("--name", default=None,
                        help="its name in the lease (default: host, pid, a tag)")  # fmt: skip
    parser.add_argument(
        "--dispatcher-creds", type=Path, default=os.environ.get("VIRTBUS_DISPATCHER_CREDS"),
        metavar="FILE", help="the webhook dispatcher's own .creds (default "
        "$VIRTBUS_DISPATCHER_CREDS; else it runs on the orchestrator's)",
    )  # fmt: skip
    parser.add_argument(
        "--node-grace", type=float, default=10.0,
        help="seconds of silence after which a node is lost (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--trust-dir", default=os.environ.get("VIRTBUS_TRUST_DIR"), metavar="D",
        help="the stack's keys (keys/*.nk, tls/ca.pem; default $VIRTBUS_TRUST_DIR): with them "
        "the orchestrator adds and revokes users",
    )  # fmt: skip
    env = os.environ.get("VIRTBUS_REPLICAS")
    parser.add_argument(
        "--replicas", type=int, default=int(env) if env else 1, metavar="N",
        help="copies of each stream and bucket it creates: one per server of the cluster, at "
        "most 5 (default $VIRTBUS_REPLICAS, else 1; what exists is left as it is)",
    )  # fmt: skip
    add_process_args(parser)
    args = parser.parse_args()
    if not 1 <= args.replicas <= 5:
        parser.error(f"--replicas: JetStream keeps 1 to 5 copies, not {args.replicas}")
    try:  # a bad pool is a usage error now, not a controller that cannot start
        configured_cidr(args.vmi_cidr)
    except ValidationError as err:
        parser.error(err.message)
    if args.trust_dir:
        try:  # a wrong directory is a usage error now, not a refused `auth add-user` later
            load(Path(args.trust_dir)).own_identities()
        except ValidationError as err:
            parser.error(err.message)
    start_telemetry("orchestrator", metrics_port=args.metrics_port)
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
