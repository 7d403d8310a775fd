"""The `virtbus` command: the client verbs, the embedded stack (`up`)
and the benchmarks assembled; the one place that starts both sides.

Imported first by the console script and `python -m virtbus`, so nats-py is loaded here, before
any verb's module, without the websocket transport whose import was 40 % of a command's start-up
(`virtbus.lazy`).
"""

from virtbus.lazy import import_nats_without_websockets

import_nats_without_websockets()
