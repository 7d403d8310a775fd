"""The `virtbus` command's start-up: nats-py loaded without its websocket transport.

nats-py imports aiohttp when it is imported, for a websocket transport virtbus never uses; that
import was 0.25 s of CPU in every command, about 40 % of `virtbus get`'s start-up. So the command
imports nats-py's transport while aiohttp is hidden, then unhides it: the verbs that do speak
HTTP with aiohttp (`image-upload`, `bench webhooks`, the embedded stack's pod driver) import it
as usual when they run. A `ws://` bus URL is then refused by nats-py ("aiohttp not installed").
"""

from __future__ import annotations

import sys
from typing import Final

_HIDDEN: Final = ("aiohttp", "multidict")


def import_nats_without_websockets() -> None:
    if "nats.aio.transport" in sys.modules or any(n in sys.modules for n in _HIDDEN):
        return  # too late or not needed: nats-py (or aiohttp) is loaded already
    for name in _HIDDEN:
        sys.modules[name] = None  # type: ignore[assignment]  # import fails: nats-py skips it
    try:
        import nats.aio.transport  # noqa: F401
    finally:
        for name in _HIDDEN:
            del sys.modules[name]
