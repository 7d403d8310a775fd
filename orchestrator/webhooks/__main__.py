"""`python -m orchestrator.webhooks [--server URL] [--creds F] [--data-dir D] [--shard I/N]`:
the dispatcher.

For an orchestrator started with webhooks off (`python -m orchestrator --no-webhooks`), or to
restart deliveries without the control plane. `--shard I/N` runs one of N processes that split
the subscriptions between them (every one of them with the same N).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from pathlib import Path

import uvloop
from nats.aio.client import Client

from bus.provision import provision
from bus.telemetry import add_process_args, serve, start_telemetry
from orchestrator.webhooks.dispatcher import Dispatcher


async def _main(args: argparse.Namespace) -> None:
    async def body(nc: Client, stop: asyncio.Event) -> None:
        await provision(nc.jetstream())
        # What exists by now lives as long as the process: out of the collector's sight, a
        # full collection no longer walks every module and stalls deliveries for tens of ms.
        gc.collect()
        gc.freeze()
        await Dispatcher(nc, data_dir=Path(args.data_dir), shard=args.shard).run(stop)

    await serve(args, name="virtbus-webhooks", body=body)


def _shard(value: str) -> tuple[int, int]:
    i, _, n = value.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not I/N, like 0/2") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"{value!r}: I must be at least 0 and below N")
    return shard


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.webhooks", description=__doc__)
    parser.add_argument("--data-dir", default=".virtbus/orchestrator")
    parser.add_argument("--shard", type=_shard, default=(0, 1),
                        help="I/N: run share I (0-based) of N of the subscriptions")  # fmt: skip
    add_process_args(parser)  # --server, --creds, --tls-ca as every virtbus process takes them
    args = parser.parse_args()
    start_telemetry("webhooks", metrics_port=args.metrics_port)
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
