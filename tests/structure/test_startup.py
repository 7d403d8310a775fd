"""The `virtbus` command starts without importing aiohttp (nats-py's websocket transport pulls
it in, 40 % of a command's start-up), and a verb that needs aiohttp still imports it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import virtbus.cli
import nats.aio.transport as t
print(sorted(n for n in ("aiohttp", "multidict") if n in sys.modules), t.aiohttp)
import aiohttp
print(aiohttp.ClientSession.__name__)
"""


def test_the_command_starts_without_aiohttp_and_can_still_import_it() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert out.stdout == "[] None\nClientSession\n"
