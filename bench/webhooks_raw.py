"""The raw baseline of `virtbus bench webhooks`, as its own process like the dispatcher it is
compared with: a plain nats-py core subscription that POSTs each message's bytes to every URL
with aiohttp. No durable consumer, acks, records, order, signatures or retries.

`python -m bench.webhooks_raw --server URL --subject S URL...`; prints `ready`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys

import aiohttp
import nats
import uvloop
from nats.aio.msg import Msg

HEADERS = {"content-type": "application/cloudevents+json; charset=utf-8"}


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.server, name="virtbus-bench-raw")
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=16))
    inflight: set[asyncio.Task[None]] = set()

    async def post(url: str, body: bytes) -> None:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            await resp.read()

    async def on_msg(msg: Msg) -> None:
        for url in args.urls:
            task = asyncio.create_task(post(url, msg.data), name="raw-post")
            inflight.add(task)
            task.add_done_callback(inflight.discard)

    sub = await nc.subscribe(args.subject, cb=on_msg, pending_msgs_limit=1_000_000)
    gc.collect()  # as the dispatcher does: start-up objects out of the collector's sight
    gc.freeze()
    await nc.flush()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    await sub.unsubscribe()
    await asyncio.gather(*inflight, return_exceptions=True)
    await session.close()
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks_raw")
    parser.add_argument("--server", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("urls", nargs="+")
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
