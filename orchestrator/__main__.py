"""`python -m orchestrator [--server URL] [--data-dir D] [--migrations FILE]`: the orchestrator
alone, on a bus. FILE is KubeVirt's `spec.configuration.migrations` as YAML."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

import nats
import uvloop

from events.provision import provision
from orchestrator.app import run_orchestrator
from orchestrator.migrations import load_policy


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.server, name="virtbus-orchestrator")
    try:
        await provision(nc.jetstream())
        policy = load_policy(Path(args.migrations)) if args.migrations else None
        await run_orchestrator(nc, data_dir=Path(args.data_dir), stop=stop,
                               migration_policy=policy)  # fmt: skip
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__)
    parser.add_argument("--data-dir", default=".virtbus/orchestrator")
    parser.add_argument("--migrations", default=None, help="migration settings, YAML")
    parser.add_argument(
        "--server", default=os.environ.get("VIRTBUS_NATS_URL", "nats://127.0.0.1:4222")
    )
    logging.basicConfig(level=logging.INFO)
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
