"""`python -m orchestrator.webhooks [--server URL] [--data-dir D]`: the dispatcher alone.

For an orchestrator started with webhooks off, or to restart deliveries without the control plane.
"""

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
from orchestrator.webhooks.dispatcher import Dispatcher


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.server, name="virtbus-webhooks")
    try:
        await provision(nc.jetstream())
        await Dispatcher(nc, data_dir=Path(args.data_dir)).run(stop)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.webhooks", description=__doc__)
    parser.add_argument("--data-dir", default=".virtbus/orchestrator")
    parser.add_argument(
        "--server", default=os.environ.get("VIRTBUS_NATS_URL", "nats://127.0.0.1:4222")
    )
    logging.basicConfig(level=logging.INFO)
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
