"""`python -m orchestrator [--server URL] [--data-dir D]`: the orchestrator alone, on a bus."""

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


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.server, name="virtbus-orchestrator")
    try:
        await provision(nc.jetstream())
        await run_orchestrator(
            nc, data_dir=Path(args.data_dir), stop=stop, webhooks=not args.no_webhooks
        )
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__)
    parser.add_argument("--data-dir", default=".virtbus/orchestrator")
    parser.add_argument("--no-webhooks", action="store_true",
                        help="run the webhook dispatcher as its own process instead")  # fmt: skip
    parser.add_argument(
        "--server", default=os.environ.get("VIRTBUS_NATS_URL", "nats://127.0.0.1:4222")
    )
    logging.basicConfig(level=logging.INFO)
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
