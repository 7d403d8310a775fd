"""`virtbus guestosinfo|userlist|fslist NAME`: virtctl's guest-agent verbs, by bus.

Each is one `guestagent` session to the node running the VM (workers/guestagent.py), whose reply
carries the answer; the CLI prints it as JSON, as virtctl does.
"""

from __future__ import annotations

import json
import sys

from bus.client import session
from bus.tunnel import connect
from virtctl.console import running_vmi


async def ask(url: str, *, verb: str, name: str, namespace: str) -> int:
    async with session(url) as nc:
        s = await running_vmi(nc, name=name, namespace=namespace)
        pipe, answer = await connect(nc, node=s.node, kind="guestagent", namespace=namespace,
                                     name=name, params={"verb": verb})  # fmt: skip
        await pipe.close("answered")
    sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    return 0
